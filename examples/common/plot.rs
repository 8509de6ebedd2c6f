//! A small line chart written as PNG, for the training examples' loss and accuracy curves:
//! panels side by side, each with a frame, grid lines, tick values and a title in a 5x7
//! bitmap font, and one polyline per series. PNG encoding by the `png` crate.

use std::path::Path;

pub type Rgb = [u8; 3];
pub const BLUE: Rgb = [31, 119, 180];
pub const ORANGE: Rgb = [255, 127, 14];
pub const GREEN: Rgb = [44, 160, 44];
const GREY: Rgb = [200, 200, 200];
const BLACK: Rgb = [0, 0, 0];

/// One curve: label (upper-case letters, digits, `.-_%:/ `), colour, (x, y) points.
pub struct Series<'a> {
    pub label: &'a str,
    pub color: Rgb,
    pub points: &'a [(f64, f64)],
}

/// One panel: a title, the x-axis label and its curves.
pub struct Panel<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub series: Vec<Series<'a>>,
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb, thick: bool) {
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for s in 0..=steps {
            let x = x0 + (x1 - x0) * s / steps;
            let y = y0 + (y1 - y0) * s / steps;
            self.set(x, y, c);
            if thick {
                self.set(x, y + 1, c);
                self.set(x + 1, y, c);
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch.to_ascii_uppercase());
            for (r, row) in g.iter().enumerate() {
                for col in 0..5 {
                    if row & (0x10 >> col) != 0 {
                        self.set(x + k as i64 * 6 + col, y + r as i64, c);
                    }
                }
            }
        }
    }
}

/// Tick label with as many decimals as the tick spacing `step` needs.
fn tick(v: f64, step: f64) -> String {
    let decimals = if step > 0.0 { (1.0 - step.log10().floor()).clamp(0.0, 6.0) as usize } else { 2 };
    format!("{v:.decimals$}")
}

/// Legend entries per row below a panel; more series wrap to further rows.
const LEGEND_COLUMNS: usize = 3;
const LEGEND_ROW: usize = 14;

/// Draws the panels side by side and writes a PNG.
pub fn write_png(path: &Path, panels: &[Panel<'_>]) -> std::io::Result<()> {
    let (pw, ph) = (480usize, 360usize);
    let legend_rows = panels.iter().map(|p| p.series.len().div_ceil(LEGEND_COLUMNS)).max().unwrap_or(1).max(1);
    let height = ph + (legend_rows - 1) * LEGEND_ROW;
    let mut cv = Canvas { w: pw * panels.len(), h: height, px: vec![255; pw * panels.len() * height * 3] };
    for (i, p) in panels.iter().enumerate() {
        let ox = (i * pw) as i64;
        let (l, r, t, b) = (ox + 60, ox + pw as i64 - 20, 30i64, ph as i64 - 60);
        let pts = p.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 - x0 < 1e-9 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-6);
        (y0, y1) = (y0 - pad, y1 + pad);
        let sx = |x: f64| l + ((x - x0) / (x1 - x0) * (r - l) as f64).round() as i64;
        let sy = |y: f64| b - ((y - y0) / (y1 - y0) * (b - t) as f64).round() as i64;
        for k in 0..=4 {
            let y = y0 + (y1 - y0) * k as f64 / 4.0;
            cv.line((l, sy(y)), (r, sy(y)), GREY, false);
            let s = tick(y, (y1 - y0) / 4.0);
            cv.text(l - 6 - 6 * s.len() as i64, sy(y) - 3, &s, BLACK);
            let x = x0 + (x1 - x0) * k as f64 / 4.0;
            cv.line((sx(x), t), (sx(x), b), GREY, false);
            let s = tick(x, (x1 - x0) / 4.0);
            cv.text(sx(x) - 3 * s.len() as i64, b + 8, &s, BLACK);
        }
        cv.line((l, t), (r, t), BLACK, false);
        cv.line((l, b), (r, b), BLACK, false);
        cv.line((l, t), (l, b), BLACK, false);
        cv.line((r, t), (r, b), BLACK, false);
        cv.text(l, 10, p.title, BLACK);
        cv.text((l + r) / 2 - 3 * p.x_label.len() as i64, b + 24, p.x_label, BLACK);
        for (k, s) in p.series.iter().enumerate() {
            let mut last = None;
            for &(x, y) in s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
                let q = (sx(x), sy(y));
                if let Some(prev) = last {
                    cv.line(prev, q, s.color, true);
                }
                cv.line((q.0 - 2, q.1), (q.0 + 2, q.1), s.color, false);
                last = Some(q);
            }
            let ly = b + 40 + (k / LEGEND_COLUMNS * LEGEND_ROW) as i64;
            let lx = l + (k % LEGEND_COLUMNS) as i64 * 150;
            cv.line((lx, ly + 3), (lx + 16, ly + 3), s.color, true);
            cv.text(lx + 22, ly, s.label, BLACK);
        }
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, cv.w as u32, cv.h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(std::io::Error::other)?;
    w.write_image_data(&cv.px).map_err(std::io::Error::other)?;
    Ok(())
}

/// 5x7 glyphs, one byte per row, bit 4 the leftmost pixel; unknown characters are blank.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        _ => [0; 7],
    }
}
