//! Drawing predictions a person can judge: each box outlined in its class colour, with its
//! label ("circle 0.87") in a filled tag whose text contrasts with it. Shapes and text are
//! drawn with imageproc; text comes from DejaVu Sans embedded in the binary, so drawing works
//! on machines with no fonts installed.

use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::{FontRef, PxScale};
use anyhow::Result;
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_text_mut, text_size};
use imageproc::rect::Rect as ImRect;

/// One box to draw: [x, y, w, h] in image pixels, a label such as "circle 0.87", and a class
/// index choosing the colour.
#[derive(Clone, Debug, PartialEq)]
pub struct Labelled {
    pub bbox: [f64; 4],
    pub label: String,
    pub class: usize,
}

// Saturated colours that stay apart from each other and from typical photo backgrounds; classes
// beyond the palette reuse it, which is acceptable since a label names the class anyway.
const PALETTE: [[u8; 3]; 12] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [0, 128, 128],
    [170, 110, 40],
    [128, 0, 0],
];

const OUTLINE_PX: i64 = 2;

// Coordinates this far out are clipped anyway; clamping first keeps the f64 -> i64 casts and the
// arithmetic on them far from overflow whatever a diverged model predicts.
const COORD_LIMIT: f64 = 1e9;

/// The drawing colour of class `class`.
pub fn colour(class: usize) -> Rgb<u8> {
    Rgb(PALETTE[class % PALETTE.len()])
}

/// WCAG relative luminance: what the eye takes as brightness, unlike a channel average.
fn luminance(c: Rgb<u8>) -> f64 {
    let lin = |v: u8| {
        let s = v as f64 / 255.0;
        if s <= 0.04045 {
            s / 12.92
        } else {
            ((s + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2])
}

// WCAG 2's contrast ratio crosses over near luminance 0.18 and so puts black text on mid reds
// and blues, where small white text reads better (as perceptual models such as APCA agree);
// a higher crossover keeps black for the genuinely light colours only.
const BLACK_TEXT_ABOVE: f64 = 0.3;

fn text_colour(background: Rgb<u8>) -> Rgb<u8> {
    if luminance(background) > BLACK_TEXT_ABOVE {
        Rgb([0, 0, 0])
    } else {
        Rgb([255, 255, 255])
    }
}

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        FontRef::try_from_slice(dejavu::sans::regular()).expect("embedded DejaVu Sans parses")
    })
}

/// Inclusive pixel rectangle; may extend past the image, drawing clips it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rect {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

impl Rect {
    #[cfg(test)]
    fn contains(&self, x: i64, y: i64) -> bool {
        (self.x0..=self.x1).contains(&x) && (self.y0..=self.y1).contains(&y)
    }

    /// The part inside a `w x h` image, as imageproc's rectangle; `None` if nothing is.
    fn clipped(&self, w: u32, h: u32) -> Option<ImRect> {
        let (x0, y0) = (self.x0.max(0), self.y0.max(0));
        let (x1, y1) = (self.x1.min(w as i64 - 1), self.y1.min(h as i64 - 1));
        (x0 <= x1 && y0 <= y1).then(|| {
            ImRect::at(x0 as i32, y0 as i32).of_size((x1 - x0 + 1) as u32, (y1 - y0 + 1) as u32)
        })
    }
}

/// The box's outer pixel rectangle, or `None` when there is nothing of it to draw.
fn outline_rect(bbox: [f64; 4], width: u32, height: u32) -> Option<Rect> {
    let [x, y, w, h] = bbox;
    if !bbox.iter().all(|v| v.is_finite()) || w <= 0.0 || h <= 0.0 {
        return None;
    }
    let px = |v: f64| v.clamp(-COORD_LIMIT, COORD_LIMIT).round() as i64;
    let (x0, y0) = (px(x), px(y));
    // A sub-pixel box still gets a visible mark rather than vanishing.
    let x1 = (px(x + w) - 1).max(x0);
    let y1 = (px(y + h) - 1).max(y0);
    let (w, h) = (width as i64, height as i64);
    if x1 < 0 || y1 < 0 || x0 >= w || y0 >= h {
        return None;
    }
    Some(Rect { x0, y0, x1, y1 })
}

fn text_px(width: u32, height: u32) -> f32 {
    (width.min(height) as f32 / 40.0).max(13.0)
}

/// A label laid out at a size: its tag's extent and where the text starts inside it.
struct TextLayout {
    scale: PxScale,
    tag_w: i64,
    tag_h: i64,
    pad_x: i64,
    pad_y: i64,
}

fn layout_text(label: &str, px: f32) -> TextLayout {
    let scale = PxScale::from(px);
    let (w, h) = text_size(scale, font(), label);
    let pad_x = (px / 4.0).round() as i64;
    let pad_y = ((px / 12.0).round() as i64).max(1);
    TextLayout {
        scale,
        tag_w: w as i64 + 2 * pad_x,
        tag_h: h as i64 + 2 * pad_y,
        pad_x,
        pad_y,
    }
}

/// The tag sits on the box's top-left corner, outside it so it hides none of the object; when
/// that would leave the image it moves inside the box, and it is always shifted to stay visible.
fn tag_rect(outline: Rect, tag_w: i64, tag_h: i64, width: u32, height: u32) -> Rect {
    let (w, h) = (width as i64, height as i64);
    let above = outline.y0 - tag_h;
    let y0 = if above >= 0 { above } else { outline.y0.max(0) };
    let y0 = y0.min(h - tag_h).max(0);
    let x0 = outline.x0.min(w - tag_w).max(0);
    Rect {
        x0,
        y0,
        x1: x0 + tag_w - 1,
        y1: y0 + tag_h - 1,
    }
}

fn fill(image: &mut RgbImage, r: Rect, c: Rgb<u8>) {
    if let Some(r) = r.clipped(image.width(), image.height()) {
        draw_filled_rect_mut(image, r, c);
    }
}

fn draw_outline(image: &mut RgbImage, r: Rect, c: Rgb<u8>) {
    let t = OUTLINE_PX - 1;
    let edges = [
        Rect { y1: r.y0 + t, ..r },
        Rect { y0: r.y1 - t, ..r },
        Rect { x1: r.x0 + t, ..r },
        Rect { x0: r.x1 - t, ..r },
    ];
    for e in edges {
        // Clipping against the box keeps a box thinner than the outline from growing.
        let e = Rect {
            x0: e.x0.max(r.x0),
            y0: e.y0.max(r.y0),
            x1: e.x1.min(r.x1),
            y1: e.y1.min(r.y1),
        };
        fill(image, e, c);
    }
}

/// Draws `label` in a tag of colour `bg` on the top-left corner of `anchor` (see [`tag_rect`]).
fn draw_label(image: &mut RgbImage, anchor: Rect, label: &str, bg: Rgb<u8>) {
    let px = text_px(image.width(), image.height());
    let text = layout_text(label, px);
    let tag = tag_rect(
        anchor,
        text.tag_w,
        text.tag_h,
        image.width(),
        image.height(),
    );
    // The text is drawn on the tag alone and the tag pasted, so that text squeezed by the
    // image border is cut at the tag's edge instead of spilling over the picture.
    let mut patch = RgbImage::from_pixel(text.tag_w as u32, text.tag_h as u32, bg);
    draw_text_mut(
        &mut patch,
        text_colour(bg),
        text.pad_x as i32,
        text.pad_y as i32,
        text.scale,
        font(),
        label,
    );
    image::imageops::replace(image, &patch, tag.x0, tag.y0);
}

/// Draws boxes (2 px outline, a colour per class) and, for each, its label in a filled tag above
/// the box's top-left corner (inside the box if there is no room above; kept inside the image).
/// Boxes partly outside the image are clipped; empty or non-finite boxes are skipped.
pub fn draw(image: &mut RgbImage, boxes: &[Labelled]) {
    let rects: Vec<_> = boxes
        .iter()
        .map(|b| outline_rect(b.bbox, image.width(), image.height()))
        .collect();
    for (b, r) in boxes.iter().zip(&rects) {
        if let Some(r) = r {
            draw_outline(image, *r, colour(b.class));
        }
    }
    // Labels go over every outline so no later box's edge runs through earlier text.
    for (b, r) in boxes.iter().zip(&rects) {
        if let Some(r) = r {
            if !b.label.trim().is_empty() {
                draw_label(image, *r, &b.label, colour(b.class));
            }
        }
    }
}

/// Loads `src` (any format the image crate reads), draws, and writes a PNG to `dst` atomically.
pub fn annotate_file(src: &Path, dst: &Path, boxes: &[Labelled]) -> Result<()> {
    let mut image = super::io::open_rgb(src)?;
    draw(&mut image, boxes);
    super::io::save_png(dst, &image::DynamicImage::ImageRgb8(image))
}

/// `image` with every pixel of a class mask tinted in its class's colour (`alpha` of the
/// colour over the picture, so the image stays visible); labels without a colour, or equal to
/// `untinted` (a background class), leave the picture as it is.
pub fn overlay(
    image: &RgbImage,
    labels: &image::GrayImage,
    colours: &[Rgb<u8>],
    alpha: f32,
    untinted: Option<u8>,
) -> RgbImage {
    let mut out = image.clone();
    for (p, l) in out.pixels_mut().zip(labels.pixels()) {
        let label = l.0[0];
        if Some(label) == untinted {
            continue;
        }
        if let Some(c) = colours.get(label as usize) {
            for k in 0..3 {
                p.0[k] = (p.0[k] as f32 * (1.0 - alpha) + c.0[k] as f32 * alpha).round() as u8;
            }
        }
    }
    out
}

/// `image` with a legend panel on its right: a swatch of each colour beside its name, one
/// entry a line, in the order given.
pub fn with_legend(image: &RgbImage, entries: &[(String, Rgb<u8>)]) -> RgbImage {
    let px = text_px(image.width(), image.height());
    let scale = PxScale::from(px);
    let line = (px * 1.5).ceil() as u32;
    let pad = (px / 2.0).ceil() as u32;
    let swatch = (px * 0.9).round() as u32;
    let text_w = entries
        .iter()
        .map(|(name, _)| text_size(scale, font(), name).0)
        .max()
        .unwrap_or(0);
    let panel_w = pad * 3 + swatch + text_w;
    let height = image.height().max(pad * 2 + line * entries.len() as u32);
    let mut out = RgbImage::from_pixel(image.width() + panel_w, height, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, image, 0, 0);
    let x0 = image.width() + pad;
    for (i, (name, c)) in entries.iter().enumerate() {
        let y = pad + line * i as u32;
        let sy = y + (line - swatch) / 2;
        draw_filled_rect_mut(
            &mut out,
            ImRect::at(x0 as i32, sy as i32).of_size(swatch, swatch),
            *c,
        );
        let ty = y + (line.saturating_sub(text_size(scale, font(), name).1)) / 2;
        draw_text_mut(
            &mut out,
            Rgb([0, 0, 0]),
            (x0 + swatch + pad) as i32,
            ty as i32,
            scale,
            font(),
            name,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREY: Rgb<u8> = Rgb([128, 128, 128]);

    fn boxed(bbox: [f64; 4], label: &str, class: usize) -> Labelled {
        Labelled {
            bbox,
            label: label.to_string(),
            class,
        }
    }

    fn tag_of(image: &RgbImage, b: &Labelled) -> Rect {
        let outline = outline_rect(b.bbox, image.width(), image.height()).unwrap();
        let text = layout_text(&b.label, text_px(image.width(), image.height()));
        tag_rect(
            outline,
            text.tag_w,
            text.tag_h,
            image.width(),
            image.height(),
        )
    }

    #[test]
    fn a_box_changes_exactly_its_outline_and_its_tag() {
        let mut image = RgbImage::from_pixel(100, 120, GREY);
        let b = boxed([20.0, 30.0, 40.0, 50.0], "x 0.5", 3);
        let tag = tag_of(&image, &b);
        draw(&mut image, std::slice::from_ref(&b));
        let c = colour(3);
        // One pixel on each edge, both pixels of the outline's thickness.
        for (x, y) in [
            (40, 30),
            (40, 31),
            (40, 79),
            (40, 78),
            (20, 55),
            (21, 55),
            (59, 55),
            (58, 55),
        ] {
            assert_eq!(*image.get_pixel(x, y), c, "({x}, {y})");
        }
        let ring = Rect {
            x0: 20,
            y0: 30,
            x1: 59,
            y1: 79,
        };
        let inner = Rect {
            x0: 22,
            y0: 32,
            x1: 57,
            y1: 77,
        };
        assert!(tag.y1 < ring.y0, "tag {tag:?} should sit above the box");
        for (x, y, p) in image.enumerate_pixels() {
            let (x, y) = (x as i64, y as i64);
            let on_outline = ring.contains(x, y) && !inner.contains(x, y);
            if on_outline {
                assert_eq!(*p, c, "outline ({x}, {y})");
            } else if !tag.contains(x, y) {
                assert_eq!(*p, GREY, "untouched ({x}, {y})");
            }
        }
    }

    fn distance(a: Rgb<u8>, b: Rgb<u8>) -> i32 {
        (0..3).map(|i| (a[i] as i32 - b[i] as i32).abs()).sum()
    }

    #[test]
    fn a_label_is_rendered_in_its_tag() {
        let mut image = RgbImage::from_pixel(200, 200, GREY);
        for class in 0..PALETTE.len() {
            let b = boxed([60.0, 80.0, 70.0, 50.0], "circle 0.87", class);
            let tag = tag_of(&image, &b);
            draw(&mut image, std::slice::from_ref(&b));
            let (bg, fg) = (colour(class), text_colour(colour(class)));
            let (mut n_bg, mut n_fg, mut n_grey) = (0, 0, 0);
            for y in tag.y0..=tag.y1 {
                for x in tag.x0..=tag.x1 {
                    let p = *image.get_pixel(x as u32, y as u32);
                    n_bg += (p == bg) as usize;
                    // Antialiased strokes rarely cover a pixel fully, so a text pixel is one
                    // nearer the text colour than the tag colour.
                    n_fg += (distance(p, fg) < distance(p, bg)) as usize;
                    n_grey += (p == GREY) as usize;
                }
            }
            assert!(n_bg > 100, "class {class}: {n_bg} background pixels");
            assert!(n_fg > 30, "class {class}: {n_fg} text pixels");
            assert_eq!(n_grey, 0, "class {class}: the tag is not filled");
            // Eleven characters at 13 px cannot fit in a narrow tag.
            assert!(tag.x1 - tag.x0 > 60 && tag.y1 - tag.y0 >= 13, "{tag:?}");
        }
    }

    #[test]
    fn text_contrasts_with_its_tag() {
        assert_eq!(text_colour(Rgb([255, 225, 25])), Rgb([0, 0, 0]));
        assert_eq!(text_colour(Rgb([128, 0, 0])), Rgb([255, 255, 255]));
        assert_eq!(text_colour(Rgb([60, 180, 75])), Rgb([0, 0, 0]));
        assert_eq!(text_colour(Rgb([145, 30, 180])), Rgb([255, 255, 255]));
        assert_eq!(text_colour(Rgb([230, 25, 75])), Rgb([255, 255, 255]));
        assert_eq!(text_colour(Rgb([0, 130, 200])), Rgb([255, 255, 255]));
    }

    #[test]
    fn a_tag_without_room_above_goes_inside_the_box_and_stays_in_the_image() {
        let image = RgbImage::new(120, 100);
        let top = tag_of(&image, &boxed([10.0, 2.0, 50.0, 40.0], "square 0.50", 0));
        assert_eq!(top.y0, 2, "{top:?}");
        let clipped_top = tag_of(&image, &boxed([10.0, -30.0, 50.0, 60.0], "square 0.50", 0));
        assert_eq!(clipped_top.y0, 0, "{clipped_top:?}");
        let right = tag_of(&image, &boxed([100.0, 50.0, 30.0, 30.0], "square 0.50", 0));
        assert_eq!(right.x1, 119, "{right:?}");
        let left = tag_of(&image, &boxed([-40.0, 50.0, 60.0, 30.0], "square 0.50", 0));
        assert_eq!(left.x0, 0, "{left:?}");
        let bottom = tag_of(&image, &boxed([10.0, 99.0, 30.0, 30.0], "square 0.50", 0));
        assert!(bottom.y1 <= 99 && bottom.y0 >= 0, "{bottom:?}");
    }

    #[test]
    fn boxes_outside_the_image_or_not_finite_do_not_panic() {
        let mut image = RgbImage::from_pixel(64, 48, GREY);
        let label = "triangle 0.91";
        let weird = [
            [-10.0, -10.0, 30.0, 30.0],
            [50.0, 40.0, 100.0, 100.0],
            [-1e300, -1e300, 2e300, 2e300],
            [f64::MAX, 0.0, f64::MAX, 10.0],
            [f64::NAN, 10.0, 10.0, 10.0],
            [10.0, 10.0, f64::INFINITY, 10.0],
            [10.0, 10.0, 0.0, 10.0],
            [10.0, 10.0, -5.0, 10.0],
            [10.0, 10.0, 0.2, 0.2],
        ];
        let boxes: Vec<_> = weird.iter().map(|&b| boxed(b, label, 5)).collect();
        draw(&mut image, &boxes[..1]);
        // The clipped box's bottom edge shows where it enters the image.
        assert_eq!(*image.get_pixel(5, 19), colour(5));
        draw(&mut image, &boxes);
        draw(&mut RgbImage::new(0, 0), &boxes);
        draw(&mut RgbImage::new(1, 1), &boxes);
        draw(&mut RgbImage::new(3, 200), &boxes);
    }

    #[test]
    fn boxes_fully_outside_the_image_draw_nothing() {
        let original = RgbImage::from_pixel(64, 48, GREY);
        let mut image = original.clone();
        let outside = [
            [64.0, 10.0, 10.0, 10.0],
            [10.0, 48.0, 10.0, 10.0],
            [-30.0, 10.0, 29.6, 10.0],
            [-50.0, -50.0, 20.0, 20.0],
            [1e12, 1e12, 5.0, 5.0],
        ];
        let boxes: Vec<_> = outside.iter().map(|&b| boxed(b, "far 0.10", 1)).collect();
        draw(&mut image, &boxes);
        assert!(image == original);
    }

    #[test]
    fn annotate_file_round_trip_writes_a_png_of_the_same_size() {
        let dir = tempfile::tempdir().unwrap();
        // A JPEG source also checks that a non-PNG input comes out as PNG.
        let src = dir.path().join("photo.jpg");
        RgbImage::from_pixel(90, 70, GREY).save(&src).unwrap();
        let dst = dir.path().join("out").join("photo.png");
        let boxes = [boxed([10.0, 20.0, 40.0, 30.0], "circle 0.87", 2)];
        annotate_file(&src, &dst, &boxes).unwrap();
        let reader = image::ImageReader::open(&dst)
            .unwrap()
            .with_guessed_format()
            .unwrap();
        assert_eq!(reader.format(), Some(image::ImageFormat::Png));
        let out = reader.decode().unwrap().to_rgb8();
        assert_eq!(out.dimensions(), (90, 70));
        assert_eq!(*out.get_pixel(30, 20), colour(2));
    }

    #[test]
    fn a_missing_source_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("no-such-image.png");
        let dst = dir.path().join("out.png");
        let err = annotate_file(&src, &dst, &[]).unwrap_err();
        assert!(format!("{err:#}").contains("no-such-image.png"), "{err:#}");
        assert!(!dst.exists());
    }

    #[test]
    fn an_overlay_tints_classes_and_a_legend_names_them() {
        let image = RgbImage::from_pixel(40, 30, GREY);
        let labels = image::GrayImage::from_fn(40, 30, |x, _| image::Luma([(x / 10) as u8]));
        let colours = [colour(0), colour(1), colour(2)];
        let out = overlay(&image, &labels, &colours, 0.5, Some(0));
        assert_eq!(*out.get_pixel(5, 5), GREY, "the untinted class");
        assert_eq!(*out.get_pixel(35, 5), GREY, "a label without a colour");
        let mixed = out.get_pixel(15, 5);
        for k in 0..3 {
            let want = ((GREY.0[k] as f32 + colour(1).0[k] as f32) / 2.0).round() as u8;
            assert_eq!(mixed.0[k], want);
        }
        let names = ["background", "circle", "square"];
        let entries: Vec<_> = names
            .iter()
            .zip(colours)
            .map(|(n, c)| (n.to_string(), c))
            .collect();
        let with = with_legend(&out, &entries);
        assert!(with.width() > out.width() + 40 && with.height() >= out.height());
        // The picture is kept, and every swatch colour appears in the panel.
        assert_eq!(*with.get_pixel(15, 5), *mixed);
        for c in colours {
            assert!((out.width()..with.width())
                .any(|x| (0..with.height()).any(|y| *with.get_pixel(x, y) == c)));
        }
        let dark = (out.width()..with.width())
            .flat_map(|x| (0..with.height()).map(move |y| (x, y)))
            .filter(|&(x, y)| with.get_pixel(x, y).0.iter().all(|&v| v < 80))
            .count();
        assert!(dark > 30, "no legend text ({dark} dark pixels)");
    }
}
