//! In-Shop Clothes Retrieval (DeepFashion). data.root is the benchmark's folder holding
//! `list_eval_partition.txt` (directly or as `Eval/list_eval_partition.txt`, as shipped):
//! - line 1: the number of images; line 2: the header
//!   `image_name item_id evaluation_status`; then `<image path> <item id> <status>` per
//!   line (columns separated by any run of spaces), status `train`, `query` or `gallery`;
//! - the images, at the listed paths (`img/WOMEN/…/01_1_front.jpg`) relative to data.root,
//!   or to `data.root/Img/` (the archive's layout) — whichever holds the first listed image.
//!
//! Standard split: train rows train (3,997 items); test is query ∪ gallery (3,985 items),
//! in file order, with [`QueryGallery`] masks. Labels are item ids made dense per split
//! (sorted by id); a class is named by its item id. Train and test items must be disjoint.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::lines::{check_root, exactly, excerpt, ListFile};
use super::{check_split, densify, DatasetListing, QueryGallery};
use crate::data::folder::data_error;
use crate::error::Result;

/// The partition list.
pub const INSHOP_LIST: &str = "list_eval_partition.txt";

const HEADER: [&str; 3] = ["image_name", "item_id", "evaluation_status"];
const FORMAT: &str = "<image_name> <item_id> <train|query|gallery>";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Train,
    Query,
    Gallery,
}

/// Lists In-Shop Clothes under `root` (see the module doc for the layout).
pub fn list_inshop(root: &Path) -> Result<DatasetListing> {
    check_root(root, "the In-shop Clothes Retrieval Benchmark folder (holding Eval/list_eval_partition.txt)")?;
    let direct = root.join(INSHOP_LIST);
    let path = if direct.exists() { direct } else { root.join("Eval").join(INSHOP_LIST) };
    if !path.exists() {
        return Err(data_error(
            &root.join(INSHOP_LIST),
            format!(
                "list file does not exist, nor {}; data.root must be the In-shop Clothes Retrieval Benchmark folder",
                Path::new("Eval").join(INSHOP_LIST).display()
            ),
        ));
    }
    let list = ListFile::read(&path, "data.root must be the In-shop Clothes Retrieval Benchmark folder")?;
    let mut lines = list.rows();
    let declared = match lines.next() {
        Some((line, text)) => match text.trim().parse::<usize>() {
            Ok(n) => (line, n),
            Err(_) => return Err(list.malformed(line, "<number of images>", text)),
        },
        None => return Err(list.error("is empty; restore it from the dataset's archive")),
    };
    match lines.next() {
        Some((_, text)) if text.split_whitespace().eq(HEADER) => {}
        Some((line, text)) => return Err(list.malformed(line, &HEADER.join(" "), text)),
        None => return Err(list.error("has no header line; restore it from the dataset's archive")),
    }

    let mut rows: Vec<(usize, &str, &str, Status)> = Vec::new();
    for (line, text) in lines {
        let Some([image, item, status]) = exactly::<3>(text) else {
            return Err(list.malformed(line, FORMAT, text));
        };
        let status = match status {
            "train" => Status::Train,
            "query" => Status::Query,
            "gallery" => Status::Gallery,
            other => {
                return Err(list.line_error(
                    line,
                    format!("status {} is not train, query or gallery; fix the line or restore the file from the dataset's archive", excerpt(other)),
                ))
            }
        };
        rows.push((line, image, item, status));
    }
    if rows.len() != declared.1 {
        return Err(list.line_error(
            declared.0,
            format!("says {} images but {} rows follow; restore the file from the dataset's archive", declared.1, rows.len()),
        ));
    }

    // Train and test items are disjoint in the benchmark; a shared item would leak.
    let mut train_items: HashMap<&str, usize> = HashMap::new();
    for &(line, _, item, status) in &rows {
        if status == Status::Train {
            train_items.entry(item).or_insert(line);
        }
    }
    if let Some(&(line, _, item, _)) = rows.iter().find(|r| r.3 != Status::Train && train_items.contains_key(r.2)) {
        return Err(list.line_error(
            line,
            format!(
                "item {item} is a test item but also a train item (line {}); the splits' items must be disjoint (restore the file from the dataset's archive)",
                train_items[item]
            ),
        ));
    }

    // The images lie under data.root or data.root/Img; the first row decides which.
    let img = root.join("Img");
    let base = match rows.first() {
        Some(&(_, first, _, _)) if !root.join(first).exists() && img.join(first).exists() => img,
        _ => root.to_path_buf(),
    };
    let mut train: Vec<(PathBuf, String)> = Vec::new();
    let mut test: Vec<(PathBuf, String)> = Vec::new();
    let mut query = Vec::new();
    let mut gallery = Vec::new();
    for &(line, image, item, status) in &rows {
        let path = base.join(image);
        list.check_image(line, &path)?;
        if status == Status::Train {
            train.push((path, item.to_string()));
        } else {
            test.push((path, item.to_string()));
            query.push(status == Status::Query);
            gallery.push(status == Status::Gallery);
        }
    }
    for (mask, name) in [(&query, "query"), (&gallery, "gallery")] {
        if !mask.iter().any(|&m| m) {
            return Err(list.error(format!("has no {name} rows; restore the file from the dataset's archive")));
        }
    }
    let (train, train_class_names) = densify(train, |item, _| item.clone());
    let (test, test_class_names) = densify(test, |item, _| item.clone());
    let rule = "train rows train, query and gallery rows test";
    check_split(&list, "train", &train, train_class_names.len(), rule)?;
    check_split(&list, "test", &test, test_class_names.len(), rule)?;
    Ok(DatasetListing {
        train,
        train_class_names,
        test,
        test_class_names,
        query_gallery: Some(QueryGallery { query, gallery }),
    })
}
