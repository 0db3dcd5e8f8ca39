//! Latency recording and reporting: one HdrHistogram per operation (µs,
//! three significant digits), the printed table, `.hgrm` percentile
//! distribution files, and the JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use hdrhistogram::Histogram;

use crate::ycsb::Operation;

/// Highest latency recorded exactly; larger values are clamped to it.
const LATENCY_US_MAX: u64 = 60_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// Latencies and error counts per operation, for one client or merged.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    latencies: BTreeMap<Operation, Histogram<u64>>,
    errors: BTreeMap<Operation, u64>,
    /// Attempts the cluster throttled (each retried, with backoff).
    throttles: BTreeMap<Operation, u64>,
}

impl Recorder {
    pub fn record(&mut self, operation: Operation, latency_us: u64) {
        self.latencies
            .entry(operation)
            .or_insert_with(new_histogram)
            .saturating_record(latency_us.max(1));
    }

    pub fn record_error(&mut self, operation: Operation) {
        *self.errors.entry(operation).or_default() += 1;
    }

    pub fn record_throttle(&mut self, operation: Operation) {
        *self.throttles.entry(operation).or_default() += 1;
    }

    pub fn throttles(&self) -> u64 {
        self.throttles.values().sum()
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (operation, histogram) in &other.latencies {
            self.latencies
                .entry(*operation)
                .or_insert_with(new_histogram)
                .add(histogram)
                .expect("histograms share bounds");
        }
        for (operation, count) in &other.errors {
            *self.errors.entry(*operation).or_default() += count;
        }
        for (operation, count) in &other.throttles {
            *self.throttles.entry(*operation).or_default() += count;
        }
    }

    pub fn operations(&self) -> u64 {
        self.latencies.values().map(Histogram::len).sum()
    }

    pub fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn histogram(&self, operation: Operation) -> Option<&Histogram<u64>> {
        self.latencies.get(&operation)
    }

    /// The per-operation table: count and percentiles in µs.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<18} {:>9} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9} {:>7} {:>9}",
            "operation",
            "count",
            "p50_us",
            "p90_us",
            "p99_us",
            "p99.9_us",
            "p99.99_us",
            "max_us",
            "errors",
            "throttled"
        );
        for operation in Operation::ALL {
            let Some(h) = self.latencies.get(&operation) else {
                continue;
            };
            let errors = self.errors.get(&operation).copied().unwrap_or(0);
            let throttles = self.throttles.get(&operation).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{:<18} {:>9} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9} {:>7} {:>9}",
                operation.name(),
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.value_at_quantile(0.9999),
                h.max(),
                errors,
                throttles
            );
        }
        out
    }

    /// Writes `<operation>.hgrm` per operation into `dir`.
    pub fn write_hgrm(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (operation, histogram) in &self.latencies {
            std::fs::write(
                dir.join(format!("{}.hgrm", operation.name())),
                percentile_distribution(histogram),
            )?;
        }
        Ok(())
    }

    /// The `"operations"` object of the JSON report.
    pub fn json_operations(&self) -> String {
        let entries: Vec<String> = self
            .latencies
            .iter()
            .map(|(operation, h)| {
                format!(
                    "\"{}\":{{\"count\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"p9999_us\":{},\"max_us\":{}}}",
                    operation.name(),
                    h.len(),
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.9),
                    h.value_at_quantile(0.99),
                    h.value_at_quantile(0.999),
                    h.value_at_quantile(0.9999),
                    h.max()
                )
            })
            .collect();
        format!("{{{}}}", entries.join(","))
    }
}

/// HdrHistogram's percentile-distribution text (the `.hgrm` format that
/// HdrHistogram's plotter reads), values in µs.
pub fn percentile_distribution(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0;
    for step in histogram.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let inverse = if quantile < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - quantile))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {}",
            step.value_iterated_to() as f64,
            quantile,
            total,
            inverse
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        histogram.mean(),
        histogram.stdev()
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        histogram.max() as f64,
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        histogram.distinct_values()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_merges_and_reports_percentiles() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for us in 1..=900 {
            a.record(Operation::Read, us);
        }
        for us in 901..=1000 {
            b.record(Operation::Read, us);
        }
        b.record_error(Operation::Update);
        a.merge(&b);
        let h = a.histogram(Operation::Read).unwrap();
        assert_eq!(h.len(), 1000);
        assert_eq!(h.value_at_quantile(0.5), 500);
        assert_eq!(a.errors(), 1);
        assert!(a.table().contains("read"));
        let json = a.json_operations();
        assert!(
            json.starts_with("{\"read\":{\"count\":1000,\"p50_us\":500"),
            "{json}"
        );
        let hgrm = percentile_distribution(h);
        assert!(hgrm.contains("Total count    =         1000"), "{hgrm}");
    }
}
