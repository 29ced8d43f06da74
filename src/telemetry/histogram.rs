//! Bucketing of values into the `HistogramProto` TensorBoard's histograms and
//! distributions dashboards draw.
//!
//! Buckets are equal-width between the smallest and largest value, exactly as
//! `numpy.histogram(values, bins=n)` places them (bucket i holds `edge[i] <= v < edge[i+1]`,
//! the last bucket also holds the maximum). TensorBoard reads bucket i as the interval
//! from `bucket_limit[i-1]` (from `min` for the first) to `bucket_limit[i]` (to `max` for
//! the last), so the right edges are the limits.

use super::event_proto::HistogramProto;
use crate::error::{HistError, Result};

/// Buckets per histogram: TensorBoard's own default (`DEFAULT_BUCKET_COUNT` of its
/// histogram summary), enough detail for the dashboard's ridgeline plot.
pub const DEFAULT_BUCKETS: usize = 30;

/// Summarises `values` into `buckets` equal-width buckets for the series `tag` (named in
/// errors). All values equal give one bucket holding them all.
pub(crate) fn bucket_values(tag: &str, values: &[f64], buckets: usize) -> Result<HistogramProto> {
    if values.is_empty() {
        return Err(HistError::input(
            tag,
            "histogram of no values; pass at least one",
        ));
    }
    if buckets == 0 {
        return Err(HistError::input(
            tag,
            "histogram with 0 buckets; use at least 1",
        ));
    }
    let non_finite = values.iter().filter(|v| !v.is_finite()).count();
    if non_finite > 0 {
        return Err(HistError::input(
            tag,
            format!(
                "{non_finite} of {} values are NaN or infinite; TensorBoard cannot bucket them",
                values.len()
            ),
        ));
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = values.iter().sum();
    let sum_squares: f64 = values.iter().map(|v| v * v).sum();
    let (bucket_limit, bucket) = if min == max {
        (vec![max], vec![values.len() as f64])
    } else {
        let edges = equal_edges(min, max, buckets);
        let mut counts = vec![0.0; buckets];
        for &v in values {
            // Interior edges at or below v; the maximum lands in the last bucket.
            let index = edges[1..buckets].partition_point(|&e| e <= v);
            counts[index] += 1.0;
        }
        (edges[1..].to_vec(), counts)
    };
    Ok(HistogramProto {
        min,
        max,
        num: values.len() as f64,
        sum,
        sum_squares,
        bucket_limit,
        bucket,
    })
}

/// `buckets + 1` edges from `min` to `max`, computed as `numpy.linspace` does (start plus
/// index times step, the last edge set to `max` exactly), so counts match numpy's.
fn equal_edges(min: f64, max: f64, buckets: usize) -> Vec<f64> {
    let step = (max - min) / buckets as f64;
    let mut edges: Vec<f64> = (0..=buckets).map(|i| i as f64 * step + min).collect();
    edges[buckets] = max;
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_half_open_buckets() {
        let h = bucket_values("t", &[0.0, 1.0, 1.0, 2.5, 4.0], 4).expect("histogram");
        assert_eq!(h.bucket_limit, vec![1.0, 2.0, 3.0, 4.0]);
        // 1.0 sits on an edge and belongs to the bucket it starts; 4.0 closes the last.
        assert_eq!(h.bucket, vec![1.0, 2.0, 1.0, 1.0]);
        assert_eq!(
            (h.min, h.max, h.num, h.sum, h.sum_squares),
            (0.0, 4.0, 5.0, 8.5, 24.25)
        );
    }

    #[test]
    fn equal_values_make_one_bucket() {
        let h = bucket_values("t", &[2.0; 3], 30).expect("histogram");
        assert_eq!((h.bucket_limit, h.bucket), (vec![2.0], vec![3.0]));
    }

    #[test]
    fn bad_input_names_the_tag() {
        let err = bucket_values("eval/norm", &[1.0, f64::NAN], 3).expect_err("NaN refused");
        assert!(err.to_string().contains("eval/norm"), "{err}");
        assert!(bucket_values("t", &[], 3).is_err());
    }
}
