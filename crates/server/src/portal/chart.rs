//! A bar chart drawn on the server as inline SVG: no script, no library, nothing fetched.
//! One bar per day, the value on hover (`<title>`) and in a text table for screen readers.

/// An SVG bar chart of `(label, value)` pairs, labelled `title`, values in `unit`.
pub fn bars(title: &str, points: &[(String, f64)], unit: &str) -> String {
    const W: f64 = 640.0;
    const H: f64 = 160.0;
    const BOTTOM: f64 = 20.0;
    let max = points.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    let n = points.len().max(1) as f64;
    let slot = W / n;
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {W} {H}\" width=\"100%\" \
         style=\"max-width:{W}px\" xmlns=\"http://www.w3.org/2000/svg\">",
        escape(title)
    );
    for (i, (label, value)) in points.iter().enumerate() {
        let height = if max > 0.0 {
            (H - BOTTOM - 10.0) * value / max
        } else {
            0.0
        };
        let x = i as f64 * slot + slot * 0.15;
        let y = H - BOTTOM - height;
        svg.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"#3b7dd8\">\
             <title>{}: {} {}</title></rect>",
            slot * 0.7,
            escape(label),
            trim(*value),
            escape(unit)
        ));
        if i % 2 == 0 || points.len() <= 7 {
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"9\" text-anchor=\"middle\">{}</text>",
                x + slot * 0.35,
                H - 6.0,
                escape(label.get(5..).unwrap_or(label))
            ));
        }
    }
    svg.push_str("</svg>");
    svg
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_point_scaled_to_the_largest() {
        let points = vec![
            ("2026-11-29".to_owned(), 2.0),
            ("2026-11-30".to_owned(), 4.0),
        ];
        let svg = bars("Images <per> day", &points, "images");
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("2026-11-30: 4 images"));
        assert!(svg.contains("Images &lt;per&gt; day"));
        assert!(bars("x", &[("d".into(), 0.0)], "u").contains("height=\"0.0\""));
    }
}
