//! Ratios between criterion results of one run, printed after the run so
//! a benchmark states its targets against a baseline measured alongside it.

use std::path::Path;

/// The median estimate (ns) criterion stored for `group/function` under
/// `criterion_dir` (the target dir's `criterion/`).
pub fn criterion_median_ns(criterion_dir: &Path, group: &str, function: &str) -> Option<f64> {
    let path = criterion_dir
        .join(group)
        .join(function)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    // {"mean":{...},"median":{"confidence_interval":{...},"point_estimate":N,...},...}
    let median = &text[text.find("\"median\"")?..];
    let value = &median[median.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = value.find([',', '}'])?;
    value[..end].trim().parse().ok()
}

/// One line comparing `numerator / denominator` with a target.
#[derive(Debug)]
pub struct Ratio<'a> {
    pub label: &'a str,
    pub group: &'a str,
    pub numerator: &'a str,
    pub denominator: &'a str,
    /// `("<=", 1.3)` or `(">=", 20.0)`.
    pub target: (&'a str, f64),
}

/// Prints each ratio with its target and whether this run met it.
/// `target_tmpdir` is the bench's `CARGO_TARGET_TMPDIR`.
pub fn print_ratios(target_tmpdir: &str, ratios: &[Ratio<'_>]) {
    let criterion_dir = Path::new(target_tmpdir)
        .parent()
        .unwrap_or(Path::new("target"))
        .join("criterion");
    println!("\n== targets (medians from this run) ==");
    for ratio in ratios {
        let (Some(n), Some(d)) = (
            criterion_median_ns(&criterion_dir, ratio.group, ratio.numerator),
            criterion_median_ns(&criterion_dir, ratio.group, ratio.denominator),
        ) else {
            println!("{}: not measured in this run", ratio.label);
            continue;
        };
        let value = n / d;
        let (op, bound) = ratio.target;
        let met = if op == "<=" {
            value <= bound
        } else {
            value >= bound
        };
        println!(
            "{}: {:.3} ({} {:.0} ns / {} {:.0} ns), target {op} {bound}: {}",
            ratio.label,
            value,
            ratio.numerator,
            n,
            ratio.denominator,
            d,
            if met { "met" } else { "NOT met" }
        );
    }
}
