//! Stanford Online Products. data.root is the `Stanford_Online_Products` folder holding:
//! - `Ebay_train.txt` and `Ebay_test.txt`: a header line
//!   `image_id class_id super_class_id path`, then one image per line, the path relative
//!   to data.root (e.g. `bicycle_final/111085122871_0.JPG`);
//! - the twelve `<super class>_final/` image folders.
//!
//! Standard split: `Ebay_train.txt` trains (classes 1–11,318), `Ebay_test.txt` tests
//! (classes 11,319–22,634, i.e. 11,316 classes); super classes are 1–12. Class ids out
//! of their file's range are errors, which also keeps the splits disjoint. A class is
//! named by its id.
use std::path::{Path, PathBuf};

use super::lines::{check_root, head_and_rest, positive_int, ListFile};
use super::{check_split, densify, DatasetListing};
use crate::error::Result;

/// The training list.
pub const SOP_TRAIN_LIST: &str = "Ebay_train.txt";
/// The test list.
pub const SOP_TEST_LIST: &str = "Ebay_test.txt";
/// Number of classes (products).
pub const SOP_CLASSES: u64 = 22_634;
/// Classes 1..=this are in `Ebay_train.txt`; the rest in `Ebay_test.txt`.
pub const SOP_TRAIN_CLASSES: u64 = 11_318;
/// Number of super classes (bicycle, cabinet, …, toaster).
const SUPER_CLASSES: u64 = 12;

const HEADER: [&str; 4] = ["image_id", "class_id", "super_class_id", "path"];
const FORMAT: &str = "<image_id> <class_id> <super_class_id> <path>";
const ROOT_HINT: &str = "data.root must be the Stanford_Online_Products folder holding Ebay_train.txt, Ebay_test.txt and the *_final/ image folders";

/// Reads one of the two lists; its class ids must lie in `classes`.
fn read_split(root: &Path, name: &str, classes: std::ops::RangeInclusive<u64>) -> Result<(ListFile, Vec<(PathBuf, u64)>)> {
    let list = ListFile::read(&root.join(name), ROOT_HINT)?;
    let mut rows = Vec::new();
    let mut lines = list.rows();
    match lines.next() {
        Some((_, text)) if text.split_whitespace().eq(HEADER) => {}
        Some((line, text)) => return Err(list.malformed(line, &HEADER.join(" "), text)),
        None => return Err(list.error(format!("is empty; it must start with the header \"{}\" (restore it from the dataset's archive)", HEADER.join(" ")))),
    }
    for (line, text) in lines {
        let parsed = head_and_rest::<3>(text)
            .and_then(|([image, class, sup], path)| Some((positive_int(image)?, positive_int(class)?, positive_int(sup)?, path)));
        let Some((_, class, sup, path)) = parsed else {
            return Err(list.malformed(line, FORMAT, text));
        };
        if !classes.contains(&class) {
            return Err(list.line_error(
                line,
                format!(
                    "class {class} is outside {name}'s range {}..={}; restore the file from the dataset's archive",
                    classes.start(),
                    classes.end()
                ),
            ));
        }
        if sup > SUPER_CLASSES {
            return Err(list.line_error(
                line,
                format!("super class {sup} is out of range 1..={SUPER_CLASSES}; restore the file from the dataset's archive"),
            ));
        }
        let path = root.join(path);
        list.check_image(line, &path)?;
        rows.push((path, class));
    }
    Ok((list, rows))
}

/// Lists Stanford Online Products under `root` (see the module doc for the layout).
pub fn list_sop(root: &Path) -> Result<DatasetListing> {
    check_root(root, "the Stanford_Online_Products folder (holding Ebay_train.txt)")?;
    let (train_list, train) = read_split(root, SOP_TRAIN_LIST, 1..=SOP_TRAIN_CLASSES)?;
    let (test_list, test) = read_split(root, SOP_TEST_LIST, SOP_TRAIN_CLASSES + 1..=SOP_CLASSES)?;
    let (train, train_class_names) = densify(train, |c, _| c.to_string());
    let (test, test_class_names) = densify(test, |c, _| c.to_string());
    let rule = format!("{SOP_TRAIN_LIST} trains, {SOP_TEST_LIST} tests");
    check_split(&train_list, "train", &train, train_class_names.len(), &rule)?;
    check_split(&test_list, "test", &test, test_class_names.len(), &rule)?;
    Ok(DatasetListing { train, train_class_names, test, test_class_names, query_gallery: None })
}
