//! CUB-200-2011. data.root is the `CUB_200_2011` folder holding:
//! - `images.txt`: `<image_id> <image path relative to images/>` per line;
//! - `image_class_labels.txt`: `<image_id> <class_id>` per line, class 1..=200;
//! - `images/`: the image files.
//!
//! Standard metric-learning split (not the file `train_test_split.txt`, which splits
//! images, not classes): classes 1–100 train, 101–200 test. A class is named by the
//! folder of its first image (e.g. `001.Black_footed_Albatross`).
use std::collections::HashMap;
use std::path::Path;

use super::lines::{check_root, exactly, head_and_rest, positive_int, ListFile};
use super::{check_split, densify, DatasetListing};
use crate::error::Result;

/// The list of images.
pub const CUB_IMAGES: &str = "images.txt";
/// The class of every image.
pub const CUB_LABELS: &str = "image_class_labels.txt";
/// The folder the paths of `images.txt` are relative to.
pub const CUB_IMAGE_DIR: &str = "images";
/// Number of classes.
pub const CUB_CLASSES: u64 = 200;
/// Classes 1..=this train; the rest test.
pub const CUB_TRAIN_CLASSES: u64 = 100;

const ROOT_HINT: &str = "data.root must be the CUB_200_2011 folder holding images.txt, image_class_labels.txt and images/";

/// One row of images.txt.
struct Entry<'a> {
    id: u64,
    line: usize,
    path: &'a str,
    class: Option<u64>,
}

/// Lists CUB-200-2011 under `root` (see the module doc for the layout).
pub fn list_cub(root: &Path) -> Result<DatasetListing> {
    check_root(root, "the CUB_200_2011 folder (holding images.txt)")?;
    let images = ListFile::read(&root.join(CUB_IMAGES), ROOT_HINT)?;
    let labels = ListFile::read(&root.join(CUB_LABELS), ROOT_HINT)?;

    let mut entries: Vec<Entry> = Vec::new();
    let mut index: HashMap<u64, usize> = HashMap::new();
    for (line, text) in images.rows() {
        let Some(([id], path)) = head_and_rest::<1>(text) else {
            return Err(images.malformed(line, "<image_id> <relative path>", text));
        };
        let Some(id) = positive_int(id) else {
            return Err(images.malformed(line, "<image_id> <relative path>", text));
        };
        if let Some(&first) = index.get(&id) {
            return Err(images.line_error(
                line,
                format!("image id {id} is listed twice (first on line {}); restore the file from the dataset's archive", entries[first].line),
            ));
        }
        index.insert(id, entries.len());
        entries.push(Entry { id, line, path, class: None });
    }

    let mut class_line: Vec<usize> = vec![0; entries.len()];
    for (line, text) in labels.rows() {
        let parsed = exactly::<2>(text).and_then(|[id, class]| Some((positive_int(id)?, class)));
        let Some((id, class_text)) = parsed else {
            return Err(labels.malformed(line, "<image_id> <class_id>", text));
        };
        let class = match class_text.parse::<u64>() {
            Ok(c) if (1..=CUB_CLASSES).contains(&c) => c,
            Ok(c) => {
                return Err(labels.line_error(
                    line,
                    format!("class {c} of image {id} is out of range 1..={CUB_CLASSES}; restore the file from the dataset's archive"),
                ))
            }
            Err(_) => return Err(labels.malformed(line, "<image_id> <class_id>", text)),
        };
        let Some(&i) = index.get(&id) else {
            return Err(labels.line_error(
                line,
                format!("image id {id} is not in {}; the two files must list the same ids (restore them from the dataset's archive)", images.path.display()),
            ));
        };
        if entries[i].class.is_some() {
            return Err(labels.line_error(
                line,
                format!("image id {id} is labelled twice (first on line {}); restore the file from the dataset's archive", class_line[i]),
            ));
        }
        entries[i].class = Some(class);
        class_line[i] = line;
    }
    if let Some(e) = entries.iter().find(|e| e.class.is_none()) {
        return Err(images.line_error(
            e.line,
            format!("image id {} has no class in {}; the two files must list the same ids (restore them from the dataset's archive)", e.id, labels.path.display()),
        ));
    }

    let image_dir = root.join(CUB_IMAGE_DIR);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for e in &entries {
        let path = image_dir.join(e.path);
        images.check_image(e.line, &path)?;
        let class = e.class.unwrap_or_default();
        let split = if class <= CUB_TRAIN_CLASSES { &mut train } else { &mut test };
        split.push((path, class));
    }
    // The class's folder, as in images.txt (e.g. "001.Black_footed_Albatross").
    let name = |class: &u64, path: &Path| {
        let rel = path.strip_prefix(&image_dir).unwrap_or(path);
        match (rel.parent(), rel.components().count()) {
            (Some(dir), n) if n > 1 => dir.to_string_lossy().into_owned(),
            _ => class.to_string(),
        }
    };
    let (train, train_class_names) = densify(train, name);
    let (test, test_class_names) = densify(test, name);
    let rule = format!("classes 1..={CUB_TRAIN_CLASSES} train, {}..={CUB_CLASSES} test", CUB_TRAIN_CLASSES + 1);
    check_split(&labels, "train", &train, train_class_names.len(), &rule)?;
    check_split(&labels, "test", &test, test_class_names.len(), &rule)?;
    Ok(DatasetListing { train, train_class_names, test, test_class_names, query_gallery: None })
}
