//! The result of one evaluation and its two renderings: one JSON object for programs,
//! a small aligned table for people.
use crate::eval::kmeans::Clustering;
use crate::eval::metrics::RetrievalMetrics;

/// Everything one evaluation found.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// Recall@K, MAP@R, R-Precision and how many queries were scored.
    pub retrieval: RetrievalMetrics,
    /// NMI of the k-means clustering of the queries, if it was computed.
    pub nmi: Option<f64>,
    /// The clustering behind `nmi` (cluster of each query, in query order).
    pub clustering: Option<Clustering>,
    /// Number of queries.
    pub queries: usize,
    /// Number of gallery rows.
    pub gallery: usize,
    /// Whether every row was both query and gallery.
    pub same_source: bool,
}

impl EvalReport {
    /// (name, value) of every metric, in report order: `recall@K` for each K, `map@r`,
    /// `r_precision`, then `nmi` when computed. All values lie in [0, 1].
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let r = &self.retrieval;
        let mut out: Vec<(String, f64)> = r.recall.iter().map(|(k, v)| (format!("recall@{k}"), *v)).collect();
        out.push(("map@r".into(), r.map_at_r));
        out.push(("r_precision".into(), r.r_precision));
        if let Some(v) = self.nmi {
            out.push(("nmi".into(), v));
        }
        out
    }

    /// One JSON object, keys in report order (see [`metrics`](Self::metrics)).
    pub fn to_json(&self) -> String {
        // Written by hand because serde_json's map would sort recall@16 before recall@2.
        let fields: Vec<String> = self
            .metrics()
            .into_iter()
            .map(|(k, v)| format!("{}: {}", serde_json::Value::from(k), serde_json::Value::from(v)))
            .collect();
        format!("{{{}}}", fields.join(", "))
    }

    /// An aligned two-column table with a line on the protocol and left-out queries.
    pub fn to_table(&self) -> String {
        let rows = self.metrics();
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0).max("metric".len());
        let mut s = format!("{:<width$}  value\n", "metric");
        for (k, v) in rows {
            s.push_str(&format!("{k:<width$}  {v:.4}\n"));
        }
        let protocol = if self.same_source { "same source, own row excluded".to_string() } else { format!("{} gallery rows", self.gallery) };
        s.push_str(&format!("{} queries ({protocol})", self.queries));
        let lone = self.retrieval.lone_queries;
        if lone > 0 {
            s.push_str(&format!("; {lone} with no other row of their label in the gallery, left out of the retrieval metrics"));
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_report_order() {
        let report = EvalReport {
            retrieval: RetrievalMetrics { recall: vec![(1, 0.5), (16, 1.0)], map_at_r: 0.25, r_precision: 0.375, scored_queries: 4, lone_queries: 1 },
            nmi: Some(0.75),
            clustering: None,
            queries: 5,
            gallery: 5,
            same_source: true,
        };
        assert_eq!(report.to_json(), r#"{"recall@1": 0.5, "recall@16": 1.0, "map@r": 0.25, "r_precision": 0.375, "nmi": 0.75}"#);
        let table = report.to_table();
        assert!(table.starts_with("metric       value\nrecall@1     0.5000\n"), "{table}");
        assert!(table.contains("1 with no other row"), "{table}");
    }
}
