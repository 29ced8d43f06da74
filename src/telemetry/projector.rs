//! Files for TensorBoard's embedding projector: `projector_config.pbtxt` in the log
//! directory and, per embedding set, `projector/<name>/` with `tensors.tsv`,
//! `metadata.tsv` and optionally `sprite.png`.
//!
//! The projector plugin looks for `projector_config.pbtxt` in every run directory (the
//! folder holding the event file) and resolves the paths in it relative to that file,
//! refusing any that lead outside it. Each set's `embedding.pbtxt` holds its own entry;
//! the config is the concatenation of all of them, so sets written at different times
//! (or by a resumed run) all stay listed.
//!
//! Size cap: a sprite may be at most 8192 × 8192 pixels (the projector's WebGL texture
//! limit), and a TSV of many thousand 512-wide rows is slow to load, so at most
//! [`ProjectorOptions::max_points`] points are written (fewer if the sprite would not
//! fit). When a set is larger it is subsampled deterministically at evenly spaced
//! indices; the metadata's `index` column names each point's row in the full set.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use tch::{Device, Kind, Tensor};

use super::thumbnails::fit_square;
use crate::error::{HistError, Result};

/// The file the projector plugin looks for in a run directory.
pub const CONFIG_FILE: &str = "projector_config.pbtxt";
/// Folder of the embedding sets, inside the log directory.
pub const PROJECTOR_DIR: &str = "projector";
/// Largest sprite side the projector front end accepts.
pub const MAX_SPRITE_SIDE: u32 = 8192;
/// Fragment of the config describing one set, kept beside its files.
const ENTRY_FILE: &str = "embedding.pbtxt";

/// How much of a set is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectorOptions {
    /// Most points written; larger sets are subsampled evenly.
    pub max_points: usize,
    /// Side of each sprite thumbnail in pixels.
    pub thumbnail_side: u32,
}

impl Default for ProjectorOptions {
    /// 10 000 points (the projector's own t-SNE sample size) of 48-pixel thumbnails
    /// (a 4800-pixel sprite).
    fn default() -> Self {
        ProjectorOptions {
            max_points: 10_000,
            thumbnail_side: 48,
        }
    }
}

/// One set of embeddings with its labels, e.g. the test split at the end of a run.
pub struct EmbeddingSet<'a> {
    /// Name shown in the projector and used for the folder; characters other than
    /// letters, digits, `.`, `-` and `_` become `_`.
    pub name: &'a str,
    /// Float `[N, D]` embeddings, on any device.
    pub embeddings: &'a Tensor,
    /// Class of every row.
    pub labels: &'a [i64],
    /// Class names indexed by label.
    pub class_names: &'a [String],
}

/// What [`write_projector`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectorOutput {
    /// The set's folder, `<log_dir>/projector/<name>`.
    pub folder: PathBuf,
    /// Rows of the full set that were written, in order.
    pub points: Vec<usize>,
    /// Thumbnails per sprite row (and column) when a sprite was written.
    pub sprite_grid: Option<u32>,
}

/// Writes `set` for the projector into `log_dir` and relists every set in
/// `projector_config.pbtxt`. `thumbnail(i)` produces image i of the set for the sprite
/// (any size, fitted into a square); `None` writes no sprite.
pub fn write_projector(
    log_dir: &Path,
    set: &EmbeddingSet,
    thumbnail: Option<&mut dyn FnMut(usize) -> Result<RgbImage>>,
    options: &ProjectorOptions,
) -> Result<ProjectorOutput> {
    let (rows, width, values) = embedding_values(set)?;
    if set.labels.len() != rows {
        return Err(HistError::input(
            "projector labels",
            format!(
                "{} labels for {rows} embeddings; pass one per row",
                set.labels.len()
            ),
        ));
    }
    if options.max_points == 0
        || options.thumbnail_side == 0
        || options.thumbnail_side > MAX_SPRITE_SIDE
    {
        return Err(HistError::input(
            "projector options",
            format!("max_points must be ≥ 1 and thumbnail_side in 1..={MAX_SPRITE_SIDE}, got {options:?}"),
        ));
    }
    let points = evenly_spaced(rows, point_cap(options, thumbnail.is_some()));

    let name = folder_name(set.name);
    let folder = log_dir.join(PROJECTOR_DIR).join(&name);
    fs::create_dir_all(&folder).map_err(|e| HistError::io(&folder, e))?;
    write_atomically(
        &folder.join("tensors.tsv"),
        tensors_tsv(&values, width, &points).as_bytes(),
    )?;
    write_atomically(
        &folder.join("metadata.tsv"),
        metadata_tsv(set, &points)?.as_bytes(),
    )?;
    let sprite_grid = match thumbnail {
        Some(thumbnail) => {
            let (sprite, grid) = sprite(&points, thumbnail, options.thumbnail_side)?;
            let mut png = Vec::new();
            sprite
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|e| {
                    HistError::input("projector sprite", format!("PNG encoding failed: {e}"))
                })?;
            write_atomically(&folder.join("sprite.png"), &png)?;
            Some(grid)
        }
        None => None,
    };
    let entry = config_entry(
        &name,
        points.len(),
        width,
        sprite_grid.map(|_| options.thumbnail_side),
    );
    write_atomically(&folder.join(ENTRY_FILE), entry.as_bytes())?;
    write_config(log_dir)?;
    Ok(ProjectorOutput {
        folder,
        points,
        sprite_grid,
    })
}

/// The set's embeddings as (rows, width, row-major f32 values), checked.
fn embedding_values(set: &EmbeddingSet) -> Result<(usize, usize, Vec<f32>)> {
    let size = set.embeddings.size();
    if size.len() != 2 || !set.embeddings.is_floating_point() || size[0] == 0 {
        return Err(HistError::input(
            "projector embeddings",
            format!(
                "expected a non-empty float [N, D] tensor, got {:?} {:?}",
                set.embeddings.kind(),
                size
            ),
        ));
    }
    let cpu = set
        .embeddings
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let values = Vec::<f32>::try_from(cpu.view([-1]))?;
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(HistError::input(
            "projector embeddings",
            format!(
                "row {} holds NaN or infinity; the projector cannot place it",
                bad / size[1] as usize
            ),
        ));
    }
    Ok((size[0] as usize, size[1] as usize, values))
}

/// Most points written: `max_points`, and with a sprite no more thumbnails than fit in
/// [`MAX_SPRITE_SIDE`]².
fn point_cap(options: &ProjectorOptions, with_sprite: bool) -> usize {
    let per_side = (MAX_SPRITE_SIDE / options.thumbnail_side.max(1)) as usize;
    if with_sprite {
        options.max_points.min(per_side * per_side)
    } else {
        options.max_points
    }
}

/// `count` of `0..total` at evenly spaced positions (all of them when `total <= count`).
fn evenly_spaced(total: usize, count: usize) -> Vec<usize> {
    if total <= count {
        return (0..total).collect();
    }
    (0..count).map(|i| i * total / count).collect()
}

/// A name safe as a folder name and inside a pbtxt string.
fn folder_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match safe.trim_matches('.') {
        "" => "embeddings".to_string(),
        _ => safe,
    }
}

/// One row per point, tab-separated; `{}` prints the shortest text that reads back as
/// the same f32.
fn tensors_tsv(values: &[f32], width: usize, points: &[usize]) -> String {
    let mut out = String::with_capacity(points.len() * width * 12);
    for &p in points {
        for (j, v) in values[p * width..(p + 1) * width].iter().enumerate() {
            if j > 0 {
                out.push('\t');
            }
            let _ = write!(out, "{v}");
        }
        out.push('\n');
    }
    out
}

/// Header `index\tlabel\tclass` (the projector treats a first line with tabs as the
/// header), then one line per point.
fn metadata_tsv(set: &EmbeddingSet, points: &[usize]) -> Result<String> {
    let mut out = String::from("index\tlabel\tclass\n");
    for &p in points {
        let label = set.labels[p];
        let class = usize::try_from(label)
            .ok()
            .and_then(|l| set.class_names.get(l))
            .ok_or_else(|| {
                HistError::input(
                    "projector labels",
                    format!(
                        "label {label} of row {p} has no class name ({} names)",
                        set.class_names.len()
                    ),
                )
            })?;
        // Tabs and line breaks would shift the TSV's columns or rows.
        let class: String = class
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let _ = writeln!(out, "{p}\t{label}\t{class}");
    }
    Ok(out)
}

/// Thumbnails of `points` tiled row-major in a square grid, the layout the projector
/// expects; returns the sprite and its thumbnails per row.
fn sprite(
    points: &[usize],
    thumbnail: &mut dyn FnMut(usize) -> Result<RgbImage>,
    side: u32,
) -> Result<(RgbImage, u32)> {
    let grid = (points.len() as f64).sqrt().ceil().max(1.0) as u32;
    let mut sprite = RgbImage::from_pixel(grid * side, grid * side, Rgb([255, 255, 255]));
    for (i, &p) in points.iter().enumerate() {
        let picture = fit_square(&thumbnail(p)?, side, Rgb([255, 255, 255]));
        let (x, y) = ((i as u32 % grid) * side, (i as u32 / grid) * side);
        image::imageops::replace(&mut sprite, &picture, i64::from(x), i64::from(y));
    }
    Ok((sprite, grid))
}

/// The `embeddings { ... }` block of one set, paths relative to the log directory.
fn config_entry(name: &str, rows: usize, width: usize, thumbnail_side: Option<u32>) -> String {
    let dir = format!("{PROJECTOR_DIR}/{name}");
    let mut entry = format!(
        "embeddings {{\n  tensor_name: \"{name}\"\n  tensor_path: \"{dir}/tensors.tsv\"\n  \
         metadata_path: \"{dir}/metadata.tsv\"\n  tensor_shape: {rows}\n  tensor_shape: {width}\n"
    );
    if let Some(side) = thumbnail_side {
        let _ = write!(
            entry,
            "  sprite {{\n    image_path: \"{dir}/sprite.png\"\n    single_image_dim: {side}\n    \
             single_image_dim: {side}\n  }}\n"
        );
    }
    entry.push_str("}\n");
    entry
}

/// Rewrites `projector_config.pbtxt` from every set's fragment, in name order.
fn write_config(log_dir: &Path) -> Result<()> {
    let sets_dir = log_dir.join(PROJECTOR_DIR);
    let mut folders: Vec<PathBuf> = fs::read_dir(&sets_dir)
        .map_err(|e| HistError::io(&sets_dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.join(ENTRY_FILE).is_file())
        .collect();
    folders.sort();
    let mut config = String::new();
    for folder in folders {
        let fragment = folder.join(ENTRY_FILE);
        config.push_str(&fs::read_to_string(&fragment).map_err(|e| HistError::io(&fragment, e))?);
    }
    write_atomically(&log_dir.join(CONFIG_FILE), config.as_bytes())
}

/// Writes through a temporary file and a rename, so a running TensorBoard never reads
/// half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).map_err(|e| HistError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| HistError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsampling_is_even_and_deterministic() {
        assert_eq!(evenly_spaced(3, 5), vec![0, 1, 2]);
        assert_eq!(evenly_spaced(10, 4), vec![0, 2, 5, 7]);
    }

    #[test]
    fn folder_names_are_safe() {
        assert_eq!(folder_name("test@step 12"), "test_step_12");
        assert_eq!(folder_name(".."), "embeddings");
        assert_eq!(folder_name("a/../b"), "a_.._b");
    }

    #[test]
    fn sprite_cap_follows_thumbnail_side() {
        // 8192 / 1024 = 8 thumbnails per side → at most 64 points with a sprite.
        let options = ProjectorOptions {
            max_points: 1000,
            thumbnail_side: 1024,
        };
        assert_eq!(point_cap(&options, true), 64);
        assert_eq!(point_cap(&options, false), 1000);
        assert_eq!(point_cap(&ProjectorOptions::default(), true), 10_000);
    }

    #[test]
    fn bad_sets_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        let e = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
        let names = vec!["a".to_string()];
        let short = EmbeddingSet {
            name: "t",
            embeddings: &e,
            labels: &[0, 0],
            class_names: &names,
        };
        let err = write_projector(dir.path(), &short, None, &ProjectorOptions::default())
            .expect_err("2 labels");
        assert!(
            err.to_string().contains("2 labels for 3 embeddings"),
            "{err}"
        );
        let unnamed = EmbeddingSet {
            name: "t",
            embeddings: &e,
            labels: &[0, 1, 0],
            class_names: &names,
        };
        let err = write_projector(dir.path(), &unnamed, None, &ProjectorOptions::default())
            .expect_err("label 1");
        assert!(err.to_string().contains("label 1 of row 1"), "{err}");
    }
}
