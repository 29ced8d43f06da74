//! Which rows of an evaluation set are queries and which form the gallery they search.
//!
//! Same-source protocol (CUB, Cars, SOP): every row is both, and a query never retrieves
//! its own row. Query–gallery protocol (In-Shop): boolean masks pick the two sets; a row
//! that is in both is still never its own neighbour.
use crate::error::{HistError, Result};

/// The query and gallery rows of a set, and where each query's own row sits in the gallery.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// Rows that are queries, ascending.
    pub query_rows: Vec<i64>,
    /// Rows that form the gallery, ascending; a gallery position indexes this list.
    pub gallery_rows: Vec<i64>,
    /// For each query, the gallery position of its own row, or −1 if it is not in the gallery.
    pub self_positions: Vec<i64>,
}

impl Split {
    /// Every one of `n` rows is a query searching all the others.
    pub fn same_source(n: usize) -> Split {
        let rows: Vec<i64> = (0..n as i64).collect();
        Split { query_rows: rows.clone(), gallery_rows: rows.clone(), self_positions: rows }
    }

    /// Queries and gallery from masks over `n` rows; a missing mask selects every row.
    pub fn from_masks(n: usize, is_query: Option<&[bool]>, is_gallery: Option<&[bool]>) -> Result<Split> {
        for (name, mask) in [("is_query", is_query), ("is_gallery", is_gallery)] {
            if let Some(m) = mask {
                if m.len() != n {
                    return Err(HistError::input(name, format!("has {} entries for {n} embeddings; give one per row", m.len())));
                }
            }
        }
        let selected = |mask: Option<&[bool]>| -> Vec<i64> {
            (0..n).filter(|&i| mask.is_none_or(|m| m[i])).map(|i| i as i64).collect()
        };
        let query_rows = selected(is_query);
        let gallery_rows = selected(is_gallery);
        if query_rows.is_empty() {
            return Err(HistError::input("is_query", "selects no row; mark at least one query"));
        }
        if gallery_rows.is_empty() {
            return Err(HistError::input("is_gallery", "selects no row; mark at least one gallery row"));
        }
        let mut position = vec![-1i64; n];
        for (p, &r) in gallery_rows.iter().enumerate() {
            position[r as usize] = p as i64;
        }
        let self_positions = query_rows.iter().map(|&r| position[r as usize]).collect();
        Ok(Split { query_rows, gallery_rows, self_positions })
    }

    /// Whether every row is both a query and a gallery entry.
    pub fn is_same_source(&self) -> bool {
        self.query_rows == self.gallery_rows
    }

    /// For each query, how many gallery entries other than its own row share its label:
    /// the R of MAP@R and R-Precision. `labels` covers all rows.
    pub fn relevant_counts(&self, labels: &[i64]) -> Vec<usize> {
        let mut in_gallery = std::collections::HashMap::<i64, usize>::new();
        for &r in &self.gallery_rows {
            *in_gallery.entry(labels[r as usize]).or_default() += 1;
        }
        self.query_rows
            .iter()
            .zip(&self.self_positions)
            .map(|(&r, &p)| {
                let same = in_gallery.get(&labels[r as usize]).copied().unwrap_or(0);
                same - usize::from(p >= 0)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_pick_rows_and_own_positions() {
        let q = [true, true, false, true];
        let g = [false, true, true, true];
        let s = Split::from_masks(4, Some(&q), Some(&g)).expect("split");
        assert_eq!(s.query_rows, vec![0, 1, 3]);
        assert_eq!(s.gallery_rows, vec![1, 2, 3]);
        assert_eq!(s.self_positions, vec![-1, 0, 2]);
        // Labels 7 7 7 8: query 0 sees rows 1, 2; query 1 sees row 2; query 3 sees none.
        assert_eq!(s.relevant_counts(&[7, 7, 7, 8]), vec![2, 1, 0]);
        assert!(Split::from_masks(4, Some(&[false; 4]), None).is_err());
        assert!(Split::from_masks(3, Some(&q), None).is_err());
        assert!(Split::same_source(4).is_same_source());
    }
}
