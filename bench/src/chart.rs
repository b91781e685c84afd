//! The results table, JSON file and SVG bar chart of vswitch/kernel ratios.
use std::fmt::Write as _;
use std::path::Path;

struct Row {
    metric: String,
    unit: String,
    /// `None`: a vswitch-only figure (no kernel counterpart).
    kernel: Option<f64>,
    vswitch: f64,
    higher_is_better: bool,
}

/// Reads `metric unit kernel vswitch [lower]` lines (kernel `-`: no
/// counterpart), writes
/// `OUT/COMMIT.json` and `OUT/COMMIT.svg`, prints the table.
pub fn report(input: &Path, commit: &str, out: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let mut rows = Vec::new();
    for l in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 {
            return Err(format!("bad results line {l:?}"));
        }
        let num = |s: &str| {
            s.parse::<f64>()
                .map_err(|_| format!("bad number {s:?} in {l:?}"))
        };
        rows.push(Row {
            metric: f[0].to_string(),
            unit: f[1].to_string(),
            kernel: if f[2] == "-" { None } else { Some(num(f[2])?) },
            vswitch: num(f[3])?,
            higher_is_better: f.get(4) != Some(&"lower"),
        });
    }
    println!(
        "{:<44} {:>14} {:>14} {:>8}  unit",
        "metric", "kernel", "vswitch", "ratio"
    );
    let mut json = Vec::new();
    for r in &rows {
        let ratio = ratio(r);
        let k = r.kernel.map_or("-".to_string(), |k| format!("{k:.2}"));
        let q = ratio.map_or("-".to_string(), |q| format!("{q:.2}x"));
        println!(
            "{:<44} {:>14} {:>14.2} {:>8}  {}",
            r.metric, k, r.vswitch, q, r.unit
        );
        json.push(serde_json::json!({"metric": r.metric, "unit": r.unit, "kernel": r.kernel, "vswitch": r.vswitch, "ratio_vs_kernel": ratio, "higher_is_better": r.higher_is_better}));
    }
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let doc = serde_json::json!({"commit": commit, "results": json});
    let jp = out.join(format!("{commit}.json"));
    std::fs::write(&jp, serde_json::to_string_pretty(&doc).unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let sp = out.join(format!("{commit}.svg"));
    std::fs::write(&sp, svg(&rows, commit)).map_err(|e| e.to_string())?;
    println!("wrote {} and {}", jp.display(), sp.display());
    Ok(())
}

/// vswitch relative to the kernel, oriented so that > 1 means vswitch wins.
fn ratio(r: &Row) -> Option<f64> {
    let k = r.kernel?;
    Some(if r.higher_is_better {
        r.vswitch / k.max(f64::MIN_POSITIVE)
    } else {
        k / r.vswitch.max(f64::MIN_POSITIVE)
    })
}

fn svg(rows: &[Row], commit: &str) -> String {
    let rows: Vec<(&Row, f64)> = rows
        .iter()
        .filter_map(|r| ratio(r).map(|q| (r, q)))
        .collect();
    let (w, bar_h, gap, left) = (760.0, 22.0, 10.0, 260.0);
    let h = 60.0 + rows.len() as f64 * (bar_h + gap);
    let max = rows.iter().map(|(_, q)| *q).fold(2.0f64, f64::max);
    let scale = (w - left - 80.0) / max;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">vswitch / kernel (higher is better), commit {commit}</text>"#
    );
    let x1 = left + scale;
    let _ = write!(
        s,
        r#"<line x1="{x1}" y1="30" x2="{x1}" y2="{}" stroke="gray" stroke-dasharray="4"/><text x="{x1}" y="{}" fill="gray">1.0x</text>"#,
        h - 15.0,
        h - 3.0
    );
    for (i, (r, v)) in rows.iter().enumerate() {
        let y = 40.0 + i as f64 * (bar_h + gap);
        let v = *v;
        let color = if v >= 1.0 { "#2a9d8f" } else { "#e76f51" };
        let _ = write!(
            s,
            r#"<text x="10" y="{}">{}</text><rect x="{left}" y="{y}" width="{}" height="{bar_h}" fill="{color}"/><text x="{}" y="{}">{v:.2}x</text>"#,
            y + 15.0,
            r.metric,
            (v * scale).max(1.0),
            left + v * scale + 5.0,
            y + 15.0
        );
    }
    s.push_str("</svg>\n");
    s
}
