//! Charts drawn on the server as inline SVG (no script, no library):
//! bars per label, and stacked bars (total and failed) per day.

use std::collections::BTreeMap;
use std::fmt::Write;

const WIDTH: u32 = 640;
const BAR_AREA: u32 = 160;
/// Where the bars start: below the title and the tallest bar's count.
const TOP: u32 = 40;
/// The widest slot a bar takes, so a few bars stay bars.
const MAX_SLOT: u32 = 80;

/// Escapes text for SVG/HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Vertical bars, one per label, each with its count on top.
pub fn bars(title: &str, values: &BTreeMap<String, u64>) -> String {
    let series: Vec<(String, u64, u64)> = values.iter().map(|(k, v)| (k.clone(), *v, *v)).collect();
    draw(title, &series, "#c0392b", "#c0392b")
}

/// Bars of totals with the failed part in red, one per label (day).
pub fn stacked_bars(title: &str, values: &BTreeMap<String, (u64, u64)>) -> String {
    let series: Vec<(String, u64, u64)> = values
        .iter()
        .map(|(k, (n, f))| (k.clone(), *n, *f))
        .collect();
    draw(title, &series, "#2e7d32", "#c0392b")
}

fn draw(title: &str, series: &[(String, u64, u64)], ok: &str, bad: &str) -> String {
    let height = TOP + BAR_AREA + 36;
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title><text x="4" y="16" class="chart-title">{t}</text>"#,
        t = escape(title)
    );
    if series.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="4" y="60">nothing in this period</text></svg>"#
        );
        return svg;
    }
    let max = series.iter().map(|s| s.1).max().unwrap_or(1).max(1);
    let slot = ((WIDTH - 8) / series.len() as u32).min(MAX_SLOT);
    let bar = (slot * 7 / 10).max(2);
    for (i, (label, total, part)) in series.iter().enumerate() {
        let x = 4 + i as u32 * slot;
        let h = (*total * u64::from(BAR_AREA) / max) as u32;
        let p = (*part * u64::from(BAR_AREA) / max) as u32;
        let base = TOP + BAR_AREA;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{}" width="{bar}" height="{h}" fill="{ok}"><title>{}: {total}</title></rect>"#,
            base - h,
            escape(label)
        );
        if p > 0 && ok != bad {
            let _ = write!(
                svg,
                r#"<rect x="{x}" y="{}" width="{bar}" height="{p}" fill="{bad}"><title>{}: {part} failed</title></rect>"#,
                base - p,
                escape(label)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" class="chart-value" text-anchor="middle">{total}</text><text x="{}" y="{}" class="chart-label" text-anchor="middle">{}</text>"#,
            x + bar / 2,
            base - h - 3,
            x + bar / 2,
            base + 16,
            escape(
                label
                    .get(5..)
                    .filter(|_| label.len() == 10)
                    .unwrap_or(label)
            )
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_scaled_labelled_and_escaped() {
        let mut values = BTreeMap::new();
        values.insert("web<1>".to_owned(), 4);
        values.insert("web2".to_owned(), 2);
        let svg = bars("Failures by minion", &values);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("web&lt;1&gt;") && !svg.contains("web<1>"));
        assert!(svg.contains(&format!(r#"height="{BAR_AREA}""#)), "{svg}");
        assert!(
            svg.contains(&format!(r#"height="{}""#, BAR_AREA / 2)),
            "{svg}"
        );
        assert!(bars("none", &BTreeMap::new()).contains("nothing in this period"));
    }

    #[test]
    fn stacked_bars_draw_the_failed_part() {
        let mut days = BTreeMap::new();
        days.insert("2026-11-30".to_owned(), (4, 1));
        let svg = stacked_bars("Deploys per day", &days);
        assert!(svg.contains("1 failed") && svg.contains(">11-30<"), "{svg}");
    }
}
