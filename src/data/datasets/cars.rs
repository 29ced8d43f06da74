//! CARS-196 (Stanford Cars). The dataset ships its labels as `cars_annos.mat` (MATLAB v5),
//! which this crate does not read; it reads a text conversion of it instead (the Python
//! snippet in docs/datasets.md writes it). data.root is the folder holding:
//! - `cars_annos.txt`: `<relative image path> <class>` per line, no header, class 1..=196,
//!   the path relative to data.root (as `relative_im_path` in the .mat: `car_ims/000001.jpg`);
//!   blank lines are ignored;
//! - the images themselves (`car_ims/`).
//!
//! Standard split: classes 1–98 train, 99–196 test. A class is named by its number.
use std::path::Path;

use super::lines::{check_root, excerpt, ListFile};
use super::{check_split, densify, DatasetListing};
use crate::error::Result;

/// The text listing read in place of `cars_annos.mat`.
pub const CARS_LIST: &str = "cars_annos.txt";
/// Number of classes.
pub const CARS_CLASSES: u64 = 196;
/// Classes 1..=this train; the rest test.
pub const CARS_TRAIN_CLASSES: u64 = 98;

const FORMAT: &str = "<relative image path> <class>";

/// Lists CARS-196 under `root` (see the module doc for the layout).
pub fn list_cars(root: &Path) -> Result<DatasetListing> {
    check_root(root, "the CARS-196 folder (holding cars_annos.txt and car_ims/)")?;
    let list = ListFile::read(
        &root.join(CARS_LIST),
        "write it from cars_annos.mat with the snippet in docs/datasets.md, into the folder holding car_ims/",
    )?;
    let mut train = Vec::new();
    let mut test = Vec::new();
    for (line, text) in list.rows() {
        // The class is the last field; the path is everything before it (spaces allowed).
        let Some((path, class_text)) = text.trim().rsplit_once(char::is_whitespace) else {
            return Err(list.malformed(line, FORMAT, text));
        };
        let path = path.trim_end();
        let class = match class_text.parse::<u64>() {
            Ok(c) if (1..=CARS_CLASSES).contains(&c) => c,
            Ok(c) => {
                return Err(list.line_error(
                    line,
                    format!("class {c} of {} is out of range 1..={CARS_CLASSES}; rewrite the file from cars_annos.mat", excerpt(path)),
                ))
            }
            Err(_) => return Err(list.malformed(line, FORMAT, text)),
        };
        let path = root.join(path);
        list.check_image(line, &path)?;
        let split = if class <= CARS_TRAIN_CLASSES { &mut train } else { &mut test };
        split.push((path, class));
    }
    let (train, train_class_names) = densify(train, |c, _| c.to_string());
    let (test, test_class_names) = densify(test, |c, _| c.to_string());
    let rule = format!("classes 1..={CARS_TRAIN_CLASSES} train, {}..={CARS_CLASSES} test", CARS_TRAIN_CLASSES + 1);
    check_split(&list, "train", &train, train_class_names.len(), &rule)?;
    check_split(&list, "test", &test, test_class_names.len(), &rule)?;
    Ok(DatasetListing { train, train_class_names, test, test_class_names, query_gallery: None })
}
