/* JPEG decoding through the system libjpeg-turbo (docs/architecture.md, pipeline/):
 * the header alone, then the whole image or only a rectangle of it, as RGB8 rows.
 * A rectangle is decoded with jpeg_crop_scanline (columns, rounded out to whole iMCUs)
 * and jpeg_skip_scanlines (rows above it), and decoding stops after its last row, so the
 * rest of the entropy-coded data is never read. Its pixels equal those of the whole
 * image's decode byte for byte (tests/data_jpeg_region.rs).
 *
 * Errors never exit: libjpeg's error_exit longjmps back to the entry point, which returns
 * a code, and the message stays in the handle. The warning that the file ends early is
 * an error too: libjpeg would fill the rest of the picture with grey, where PIL raises
 * "image file is truncated". A marker that cuts a segment short inside a complete file
 * (a corrupt scan) stays a warning, as PIL ignores it: the missing blocks decode grey. */
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h> /* jpeglib.h needs FILE and size_t first */
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>

/* jpeg_crop_scanline and jpeg_skip_scanlines are libjpeg-turbo's (1.5+); the version macro
 * exists from 2.0. build.rs compiles this file to find out whether the fast path exists. */
#if !defined(LIBJPEG_TURBO_VERSION_NUMBER) || LIBJPEG_TURBO_VERSION_NUMBER < 2000000
#error "libjpeg-turbo 2.0 or newer is needed (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

/* Return codes, mirrored in src/data/pipeline/jpeg_region.rs. */
enum {
  HIST_JPEG_OK = 0,
  HIST_JPEG_ERROR = 1,       /* invalid data or a libjpeg limit: the message says which */
  HIST_JPEG_TRUNCATED = 2,   /* the data ends early */
  HIST_JPEG_UNSUPPORTED = 3, /* a colour space libjpeg cannot give as RGB (CMYK, YCCK, ...) */
  HIST_JPEG_BAD_CALL = 4,    /* region outside the image, or calls out of order */
  HIST_JPEG_DAMAGED = 5      /* a partial region met a corrupt scan: decode the whole image */
};

typedef struct {
  struct jpeg_decompress_struct decompress;
  struct jpeg_error_mgr errors;
  jmp_buf jump;
  int failure; /* the code that the longjmp returns */
  int header_read;
  uint32_t rows_left; /* of the started region */
  int partial;        /* the started region skips rows or crops columns */
  char message[JMSG_LENGTH_MAX];
} hist_jpeg;

static void fail(j_common_ptr info, int code) {
  hist_jpeg *h = (hist_jpeg *)info->client_data;
  (*info->err->format_message)(info, h->message);
  h->failure = code;
  longjmp(h->jump, 1);
}

static void on_error(j_common_ptr info) { fail(info, HIST_JPEG_ERROR); }

/* level -1: a warning; 0 and up: trace messages, ignored. Other warnings (stray bytes
 * between markers, a bad Huffman code, a segment cut short by a marker) are ignored as
 * PIL ignores them. But a partial region that meets a segment cut short gives pixels
 * other than the whole decode's (skipping and cropping recover from the damage
 * differently), so it asks for a whole decode instead. */
static void on_message(j_common_ptr info, int level) {
  if (level >= 0) return;
  int code = info->err->msg_code;
  if (code == JWRN_JPEG_EOF) fail(info, HIST_JPEG_TRUNCATED);
  if (code == JWRN_HIT_MARKER && ((hist_jpeg *)info->client_data)->partial) fail(info, HIST_JPEG_DAMAGED);
}

static void quiet(j_common_ptr info) { (void)info; }

/* A decoder for one image; NULL when out of memory. */
hist_jpeg *hist_jpeg_new(void) {
  hist_jpeg *volatile h = (hist_jpeg *)calloc(1, sizeof(hist_jpeg)); /* read after longjmp */
  if (h == NULL) return NULL;
  h->decompress.err = jpeg_std_error(&h->errors);
  h->errors.error_exit = on_error;
  h->errors.emit_message = on_message;
  h->errors.output_message = quiet;
  h->decompress.client_data = h; /* kept by jpeg_create_decompress */
  if (setjmp(h->jump)) { /* jpeg_create_decompress fails only when out of memory */
    jpeg_destroy_decompress(&h->decompress);
    free(h);
    return NULL;
  }
  jpeg_create_decompress(&h->decompress);
  return h;
}

void hist_jpeg_free(hist_jpeg *h) {
  if (h == NULL) return;
  jpeg_destroy_decompress(&h->decompress);
  free(h);
}

/* Why the last call failed. */
const char *hist_jpeg_message(const hist_jpeg *h) { return h->message; }

/* Reads the header of `data`, which must outlive `h`. On HIST_JPEG_OK and
 * HIST_JPEG_UNSUPPORTED, *width and *height are the image's size. */
int hist_jpeg_read_header(hist_jpeg *h, const uint8_t *data, size_t len, uint32_t *width, uint32_t *height) {
  struct jpeg_decompress_struct *d = &h->decompress;
  if (h->header_read) return HIST_JPEG_BAD_CALL;
  if (setjmp(h->jump)) return h->failure;
  jpeg_mem_src(d, data, (unsigned long)len);
  jpeg_read_header(d, TRUE);
  h->header_read = 1;
  *width = d->image_width;
  *height = d->image_height;
  switch (d->jpeg_color_space) {
    case JCS_GRAYSCALE: /* replicated into R, G and B, as PIL's convert("RGB") */
    case JCS_YCbCr:
    case JCS_RGB:
      return HIST_JPEG_OK;
    default:
      snprintf(h->message, sizeof h->message, "colour space %d has no RGB conversion in libjpeg", (int)d->jpeg_color_space);
      return HIST_JPEG_UNSUPPORTED;
  }
}

/* Starts decoding columns [x, x + w) of rows [y, y + rows): libjpeg decodes a window of
 * whole iMCU columns around them, *window_left and *window_width, and hist_jpeg_read_rows
 * then writes the window's rows. */
int hist_jpeg_start_region(hist_jpeg *h, uint32_t x, uint32_t y, uint32_t w, uint32_t rows, uint32_t *window_left,
                           uint32_t *window_width) {
  struct jpeg_decompress_struct *d = &h->decompress;
  if (!h->header_read || w == 0 || rows == 0 || x > d->image_width || w > d->image_width - x ||
      y > d->image_height || rows > d->image_height - y) {
    snprintf(h->message, sizeof h->message, "region %ux%u at (%u, %u) does not fit the %ux%u image", w, rows, x, y,
             d->image_width, d->image_height);
    return HIST_JPEG_BAD_CALL;
  }
  h->header_read = 0; /* one decode per header */
  h->partial = y > 0 || x > 0 || w < d->image_width;
  if (setjmp(h->jump)) return h->failure;
  d->out_color_space = JCS_RGB;
  jpeg_start_decompress(d);
  /* The window is widened by a pixel each side (within the image): libjpeg upsamples the
   * chroma of a window's edge columns as if they were the image's edge, and the pixel
   * beyond the region's edge is where that difference lands. It is also at least
   * MIN_WINDOW wide: libjpeg picks its fancy (smoothing) chroma upsampler for the whole
   * image at jpeg_start_decompress, and on a window only one chroma sample wide that
   * upsampler gives other pixels (measured: every 2-pixel window of 4:2:0 files, none from
   * 3 pixels up, over every region of small test images; tests/data_jpeg_region.rs). */
  enum { MIN_WINDOW = 16 };
  JDIMENSION left = x > 0 ? x - 1 : 0;
  JDIMENSION right = x + w < d->output_width ? x + w + 1 : d->output_width;
  if (right - left < MIN_WINDOW) {
    right = left + MIN_WINDOW < d->output_width ? left + MIN_WINDOW : d->output_width;
    left = right > MIN_WINDOW ? right - MIN_WINDOW : 0;
  }
  JDIMENSION window = right - left;
  if (window < d->output_width) jpeg_crop_scanline(d, &left, &window); /* rounds left down, widens */
  if (y > 0 && jpeg_skip_scanlines(d, y) != y) {
    snprintf(h->message, sizeof h->message, "libjpeg could not skip to row %u", y);
    return HIST_JPEG_ERROR;
  }
  h->rows_left = rows;
  *window_left = left;
  *window_width = d->output_width; /* the window's, after jpeg_crop_scanline */
  return HIST_JPEG_OK;
}

/* Writes the started region's rows, window_width * 3 bytes each, `stride` bytes apart,
 * into `out`. Writing into the caller's buffer directly, rather than through a row buffer
 * and a copy, is also faster than it looks: a single reused row buffer made whole decodes
 * 35 % slower or not, depending on where it fell in memory (cache aliasing with libjpeg's
 * own buffers). A region that reaches the bottom row reads the data to its end, so a file
 * cut short is reported as by a whole-image decode; one that does not stops there. */
int hist_jpeg_read_rows(hist_jpeg *h, uint8_t *out, size_t stride) {
  struct jpeg_decompress_struct *d = &h->decompress;
  if (h->rows_left == 0 || stride < (size_t)d->output_width * 3) {
    snprintf(h->message, sizeof h->message, "no region started, or a stride narrower than its rows");
    return HIST_JPEG_BAD_CALL;
  }
  if (setjmp(h->jump)) return h->failure;
  for (uint32_t i = 0; h->rows_left > 0; i++, h->rows_left--) {
    JSAMPROW row = out + (size_t)i * stride;
    if (jpeg_read_scanlines(d, &row, 1) != 1) {
      snprintf(h->message, sizeof h->message, "libjpeg returned no row %u", d->output_scanline);
      return HIST_JPEG_ERROR;
    }
  }
  if (d->output_scanline == d->output_height) {
    jpeg_finish_decompress(d);
  } else {
    jpeg_abort_decompress(d);
  }
  return HIST_JPEG_OK;
}

/* The libjpeg-turbo version this file was compiled against, e.g. 2001005 for 2.1.5. */
int hist_jpeg_version(void) { return LIBJPEG_TURBO_VERSION_NUMBER; }
