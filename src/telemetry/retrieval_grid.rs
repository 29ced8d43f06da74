//! The retrieval grid image: a few fixed test queries, one per row, each followed by its
//! nearest neighbours, outlined green when they share the query's class and red when not.

use image::{Rgb, RgbImage};
use tch::{Device, Kind, Tensor};

use super::thumbnails::fit_square;
use crate::error::{HistError, Result};
use crate::eval::knn::{knn, KnnOptions};

/// Outline of the query cell (first column).
pub const QUERY_COLOUR: Rgb<u8> = Rgb([40, 90, 220]);
/// Outline of a neighbour with the query's class.
pub const CORRECT_COLOUR: Rgb<u8> = Rgb([0, 190, 0]);
/// Outline of a neighbour of another class.
pub const WRONG_COLOUR: Rgb<u8> = Rgb([220, 0, 0]);
/// Gaps, padding and empty cells.
pub const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);

/// Queries (rows) the trainer's grid shows.
pub const GRID_QUERIES: usize = 8;
/// Neighbours per query the trainer's grid shows.
pub const GRID_NEIGHBOURS: usize = 8;

/// Sizes of the grid, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridStyle {
    /// Side of each thumbnail.
    pub cell: u32,
    /// Width of the coloured outline around each thumbnail.
    pub outline: u32,
    /// Space between cells and around the grid; doubled after the query column.
    pub gap: u32,
}

impl Default for GridStyle {
    fn default() -> Self {
        GridStyle {
            cell: 64,
            outline: 3,
            gap: 4,
        }
    }
}

/// One row of the grid: a query and its neighbours, nearest first (indices into the same
/// set the labels and thumbnails describe; the query itself must not be among them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrievalRow {
    /// The query image.
    pub query: usize,
    /// Its neighbours, nearest first.
    pub neighbours: Vec<usize>,
}

/// `count` query indices spread evenly over `0..num_items` (the same ones at every
/// evaluation, so rows can be compared across epochs). Fewer when `num_items < count`.
pub fn spread_queries(num_items: usize, count: usize) -> Vec<usize> {
    let count = count.min(num_items);
    // Centre of each of `count` equal slices: datasets sorted by class then give
    // queries from classes spread over the whole test set.
    (0..count)
        .map(|i| (2 * i + 1) * num_items / (2 * count))
        .collect()
}

/// The `k` nearest other rows of each query, by cosine similarity of `embeddings`
/// `[N, D]` (the evaluation's own search: `eval::knn`, self excluded, ties by index).
pub fn nearest_neighbours(
    embeddings: &Tensor,
    queries: &[usize],
    k: usize,
) -> Result<Vec<RetrievalRow>> {
    let n = embeddings.size().first().copied().unwrap_or(0);
    if let Some(&bad) = queries.iter().find(|&&q| q as i64 >= n) {
        return Err(HistError::input(
            "queries",
            format!("index {bad} is outside the {n} embeddings"),
        ));
    }
    let positions: Vec<i64> = queries.iter().map(|&q| q as i64).collect();
    let index = Tensor::from_slice(&positions).to_device(embeddings.device());
    let query_rows = embeddings.f_index_select(0, &index)?;
    let found = knn(
        &query_rows,
        embeddings,
        Some(&positions),
        k,
        &KnnOptions::default(),
    )?;
    let columns = found.indices.size().get(1).copied().unwrap_or(0);
    let flat = Vec::<i64>::try_from(
        found
            .indices
            .to_device(Device::Cpu)
            .to_kind(Kind::Int64)
            .view([-1]),
    )?;
    Ok(queries
        .iter()
        .enumerate()
        .map(|(row, &query)| {
            let slots = &flat[row * columns as usize..(row + 1) * columns as usize];
            // −1 marks "no candidate left" (k reached the set size); drop those slots.
            let neighbours = slots
                .iter()
                .filter(|&&j| j >= 0)
                .map(|&j| j as usize)
                .collect();
            RetrievalRow { query, neighbours }
        })
        .collect())
}

/// Renders the grid: one row per entry of `rows`, the query in the first column and its
/// neighbours after it, each outlined by [`QUERY_COLOUR`], [`CORRECT_COLOUR`] (same label
/// as the query) or [`WRONG_COLOUR`]. `thumbnail(i)` produces image i of the set (any
/// size; it is fitted into the cell), e.g. [`super::thumbnails::image_from_chw_u8`] over
/// an in-memory set or a decoder for a streaming one.
pub fn render_retrieval_grid<F>(
    rows: &[RetrievalRow],
    labels: &[i64],
    mut thumbnail: F,
    style: &GridStyle,
) -> Result<RgbImage>
where
    F: FnMut(usize) -> Result<RgbImage>,
{
    if rows.is_empty() {
        return Err(HistError::input(
            "retrieval grid",
            "no query rows; pass at least one",
        ));
    }
    if style.cell == 0 {
        return Err(HistError::input(
            "retrieval grid",
            "cell size 0; use at least 1 pixel",
        ));
    }
    let label_of = |i: usize| {
        labels.get(i).copied().ok_or_else(|| {
            HistError::input(
                "retrieval grid",
                format!("image {i} has no label ({} labels)", labels.len()),
            )
        })
    };
    let columns = 1 + rows.iter().map(|r| r.neighbours.len()).max().unwrap_or(0) as u32;
    let framed = style.cell + 2 * style.outline;
    let width = columns * framed + (columns + 2) * style.gap;
    let height = rows.len() as u32 * framed + (rows.len() as u32 + 1) * style.gap;
    let mut grid = RgbImage::from_pixel(width, height, BACKGROUND);
    for (r, row) in rows.iter().enumerate() {
        let top = style.gap + r as u32 * (framed + style.gap);
        let query_label = label_of(row.query)?;
        let cells = std::iter::once((row.query, QUERY_COLOUR)).chain(
            row.neighbours
                .iter()
                .map(|&j| {
                    Ok((
                        j,
                        if label_of(j)? == query_label {
                            CORRECT_COLOUR
                        } else {
                            WRONG_COLOUR
                        },
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
        );
        for (c, (image_index, colour)) in cells.enumerate() {
            // The extra gap after column 0 sets the query apart from its neighbours.
            let extra = if c > 0 { style.gap } else { 0 };
            let left = style.gap + c as u32 * (framed + style.gap) + extra;
            let picture = fit_square(&thumbnail(image_index)?, style.cell, BACKGROUND);
            draw_cell(&mut grid, left, top, &picture, colour, style.outline);
        }
    }
    Ok(grid)
}

/// Fills an outlined square at (left, top) with `colour` and puts `picture` inside.
fn draw_cell(
    grid: &mut RgbImage,
    left: u32,
    top: u32,
    picture: &RgbImage,
    colour: Rgb<u8>,
    outline: u32,
) {
    let side = picture.width() + 2 * outline;
    for y in top..top + side {
        for x in left..left + side {
            grid.put_pixel(x, y, colour);
        }
    }
    image::imageops::replace(
        grid,
        picture,
        i64::from(left + outline),
        i64::from(top + outline),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Image i is a flat grey of level 10·i.
    fn grey(i: usize) -> Result<RgbImage> {
        Ok(RgbImage::from_pixel(5, 5, Rgb([(10 * i) as u8; 3])))
    }

    #[test]
    fn outlines_mark_correct_and_wrong_neighbours() {
        let style = GridStyle {
            cell: 6,
            outline: 2,
            gap: 3,
        };
        let labels = [0, 0, 1, 1, 0];
        let rows = vec![
            RetrievalRow {
                query: 0,
                neighbours: vec![4, 2, 1],
            },
            RetrievalRow {
                query: 3,
                neighbours: vec![2],
            },
        ];
        let grid = render_retrieval_grid(&rows, &labels, grey, &style).expect("grid");
        let framed = 6 + 2 * 2;
        assert_eq!(grid.dimensions(), (4 * framed + 6 * 3, 2 * framed + 3 * 3));
        let cell_left = |c: u32| 3 + c * (framed + 3) + if c > 0 { 3 } else { 0 };
        let row_top = |r: u32| 3 + r * (framed + 3);
        let outline_at = |r: u32, c: u32| *grid.get_pixel(cell_left(c), row_top(r));
        let inside_at = |r: u32, c: u32| *grid.get_pixel(cell_left(c) + 2 + 3, row_top(r) + 2 + 3);
        assert_eq!(outline_at(0, 0), QUERY_COLOUR);
        assert_eq!(outline_at(0, 1), CORRECT_COLOUR, "4 shares class 0");
        assert_eq!(outline_at(0, 2), WRONG_COLOUR, "2 is class 1");
        assert_eq!(outline_at(0, 3), CORRECT_COLOUR);
        assert_eq!(outline_at(1, 0), QUERY_COLOUR);
        assert_eq!(outline_at(1, 1), CORRECT_COLOUR, "2 shares class 1 with 3");
        // The outline's far corner too, and thumbnails inside.
        assert_eq!(
            *grid.get_pixel(cell_left(2) + framed - 1, row_top(0) + framed - 1),
            WRONG_COLOUR
        );
        assert_eq!(inside_at(0, 0), Rgb([0; 3]));
        assert_eq!(inside_at(0, 1), Rgb([40; 3]));
        assert_eq!(inside_at(1, 0), Rgb([30; 3]));
        // Row 1 has one neighbour: the rest of it is background, as are the gaps.
        assert_eq!(outline_at(1, 2), BACKGROUND);
        assert_eq!(*grid.get_pixel(0, 0), BACKGROUND);
        assert_eq!(*grid.get_pixel(cell_left(1) - 1, row_top(0)), BACKGROUND);
    }

    #[test]
    fn unknown_label_is_an_error() {
        let rows = vec![RetrievalRow {
            query: 0,
            neighbours: vec![7],
        }];
        let err = render_retrieval_grid(&rows, &[0, 1], grey, &GridStyle::default())
            .expect_err("bad index");
        assert!(err.to_string().contains("image 7"), "{err}");
    }

    #[test]
    fn queries_are_spread_and_neighbours_exclude_self() {
        assert_eq!(spread_queries(100, 4), vec![12, 37, 62, 87]);
        assert_eq!(spread_queries(2, 5), vec![0, 1]);
        // Points on a line: nearest by angle in 2-D.
        let e = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.1, 0.0, 1.0, 1.0, 0.3]).view([4, 2]);
        let rows = nearest_neighbours(&e, &[0, 2], 2).expect("neighbours");
        assert_eq!(
            rows[0],
            RetrievalRow {
                query: 0,
                neighbours: vec![1, 3]
            }
        );
        assert_eq!(
            rows[1],
            RetrievalRow {
                query: 2,
                neighbours: vec![3, 1]
            }
        );
    }
}
