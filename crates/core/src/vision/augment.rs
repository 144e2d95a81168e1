//! Augmentations of a square model input. The geometric ones apply alike to its pixels and to
//! its target: boxes (clipped, dropped when too little is left) or a class mask (nearest
//! neighbour, so labels are never blended). A flip both ways, a quarter turn (aerial and
//! microscope images have no "up"), and a zoom: a window of the input scaled back to the full
//! size (in, a crop; out, the input shrunk with padding around it). Colour jitter (brightness,
//! contrast, saturation) changes the pixels only.
//!
//! An augmentation is drawn from the example's view (see [`crate::train::rng::view`]), so the
//! same view always gives the same input and target, and cached features stay valid.

use image::imageops::{self, FilterType};
use image::{GrayImage, ImageBuffer, Luma, Pixel, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::input::pad_colour;

/// Which augmentations a task draws from, and how far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentPolicy {
    /// Flip left-right with probability one half.
    pub flip_horizontal: bool,
    /// Flip upside down with probability one half (aerial and microscope images).
    pub flip_vertical: bool,
    /// Zoom by a factor drawn log-uniformly from this range (1: none), about a random point.
    pub zoom: (f64, f64),
    /// Turn by 0, 1, 2 or 3 quarter turns, each equally likely.
    pub rotate90: bool,
    /// Scale brightness, contrast and saturation each by a factor drawn uniformly from
    /// `1 - colour ..= 1 + colour` (0: none).
    pub colour: f64,
}

impl Default for AugmentPolicy {
    fn default() -> Self {
        Self {
            flip_horizontal: true,
            flip_vertical: false,
            zoom: (1.0, 1.0),
            rotate90: false,
            colour: 0.0,
        }
    }
}

/// One drawn augmentation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    pub flip_horizontal: bool,
    pub flip_vertical: bool,
    /// Input pixels per pixel of the window shown (above 1 zooms in).
    pub zoom: f64,
    /// The window's top-left corner as a fraction of the room it has to move in.
    pub at: (f64, f64),
    /// Clockwise quarter turns, 0 to 3, after the flips.
    pub quarter_turns: u8,
    /// Brightness, contrast and saturation factors (1: unchanged).
    pub colour: [f32; 3],
}

impl Augment {
    /// Nothing changes.
    pub const IDENTITY: Self = Self {
        flip_horizontal: false,
        flip_vertical: false,
        zoom: 1.0,
        at: (0.0, 0.0),
        quarter_turns: 0,
        colour: [1.0; 3],
    };

    /// The augmentation of `view` under `policy`: view 0 is always the identity.
    pub fn draw(policy: &AugmentPolicy, view: u64) -> Self {
        if view == 0 {
            return Self::IDENTITY;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(view);
        let (lo, hi) = policy.zoom;
        let zoom = if hi > lo {
            rng.random_range(lo.ln()..hi.ln()).exp()
        } else {
            lo
        };
        let flip_horizontal = policy.flip_horizontal && rng.random::<bool>();
        let flip_vertical = policy.flip_vertical && rng.random::<bool>();
        let at = (rng.random(), rng.random());
        // Drawn after the older choices, so that a policy without them draws the same views
        // as before they existed.
        let quarter_turns = if policy.rotate90 {
            rng.random_range(0..4u8)
        } else {
            0
        };
        let c = policy.colour.clamp(0.0, 1.0) as f32;
        let colour = if c > 0.0 {
            [(); 3].map(|_| rng.random_range(1.0 - c..=1.0 + c))
        } else {
            [1.0; 3]
        };
        Self {
            flip_horizontal,
            flip_vertical,
            zoom,
            at,
            quarter_turns,
            colour,
        }
    }

    /// The window of a `size` input that fills the output: `(x0, y0, side)`, in input pixels.
    fn window(&self, size: u32) -> (f64, f64, f64) {
        let s = size as f64;
        let side = s / self.zoom;
        // Zooming in, the window moves inside the input; zooming out, the input inside it.
        let room = s - side;
        (room * self.at.0, room * self.at.1, side)
    }

    fn zoomed<P>(
        &self,
        image: &ImageBuffer<P, Vec<u8>>,
        fill: P,
        filter: FilterType,
    ) -> ImageBuffer<P, Vec<u8>>
    where
        P: Pixel<Subpixel = u8> + 'static,
    {
        let size = image.width();
        if self.zoom == 1.0 {
            return image.clone();
        }
        let (x0, y0, side) = self.window(size);
        let k = size as f64 / side;
        // The part of the input inside the window, and where it lands in the output.
        let (ix0, iy0) = (x0.max(0.0), y0.max(0.0));
        let (ix1, iy1) = ((x0 + side).min(size as f64), (y0 + side).min(size as f64));
        let mut out = ImageBuffer::from_pixel(size, size, fill);
        let (cw, ch) = ((ix1 - ix0).round() as u32, (iy1 - iy0).round() as u32);
        if cw == 0 || ch == 0 {
            return out;
        }
        let part =
            imageops::crop_imm(image, ix0.round() as u32, iy0.round() as u32, cw, ch).to_image();
        let (ow, oh) = (
            ((cw as f64) * k).round().max(1.0) as u32,
            ((ch as f64) * k).round().max(1.0) as u32,
        );
        let scaled = imageops::resize(&part, ow, oh, filter);
        imageops::replace(
            &mut out,
            &scaled,
            ((ix0 - x0) * k).round() as i64,
            ((iy0 - y0) * k).round() as i64,
        );
        out
    }

    fn flipped<P: Pixel + 'static>(
        &self,
        mut image: ImageBuffer<P, Vec<P::Subpixel>>,
    ) -> ImageBuffer<P, Vec<P::Subpixel>> {
        if self.flip_horizontal {
            imageops::flip_horizontal_in_place(&mut image);
        }
        if self.flip_vertical {
            imageops::flip_vertical_in_place(&mut image);
        }
        match self.quarter_turns % 4 {
            1 => imageops::rotate90(&image),
            2 => {
                imageops::rotate180_in_place(&mut image);
                image
            }
            3 => imageops::rotate270(&image),
            _ => image,
        }
    }

    /// Brightness scales every channel, contrast pulls each pixel towards (or away from) the
    /// image's mean grey, saturation towards (or away from) the pixel's own grey.
    fn coloured(&self, mut image: RgbImage) -> RgbImage {
        let [b, c, s] = self.colour;
        if self.colour == [1.0; 3] {
            return image;
        }
        let grey = |p: &[f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        let n = (image.width() * image.height()).max(1) as f32;
        let mean = image
            .pixels()
            .map(|p| grey(&p.0.map(|v| v as f32)) * b)
            .sum::<f32>()
            / n;
        for p in image.pixels_mut() {
            let v = p.0.map(|v| v as f32 * b);
            let v = v.map(|x| mean + (x - mean) * c);
            let g = grey(&v);
            p.0 = v.map(|x| (g + (x - g) * s).round().clamp(0.0, 255.0) as u8);
        }
        image
    }

    /// The augmented input (square); uncovered pixels take the padding colour.
    pub fn image(&self, image: &RgbImage) -> RgbImage {
        self.coloured(self.flipped(self.zoomed(image, pad_colour(), FilterType::Triangle)))
    }

    /// The augmented class mask (square); uncovered pixels take `fill` (the ignore index).
    pub fn mask(&self, mask: &GrayImage, fill: u8) -> GrayImage {
        self.flipped(self.zoomed(mask, Luma([fill]), FilterType::Nearest))
    }

    /// A box `[x0, y0, x1, y1]` of a `size` input, augmented and clipped; `None` when less than
    /// `min_visible` of it is left.
    pub fn boxed(&self, b: [f32; 4], size: u32, min_visible: f64) -> Option<[f32; 4]> {
        let s = size as f64;
        let (x0, y0, side) = self.window(size);
        let k = s / side;
        let mut t = [
            (b[0] as f64 - x0) * k,
            (b[1] as f64 - y0) * k,
            (b[2] as f64 - x0) * k,
            (b[3] as f64 - y0) * k,
        ];
        let area = (t[2] - t[0]) * (t[3] - t[1]);
        t = [t[0].max(0.0), t[1].max(0.0), t[2].min(s), t[3].min(s)];
        if t[2] <= t[0] || t[3] <= t[1] || (t[2] - t[0]) * (t[3] - t[1]) < min_visible * area {
            return None;
        }
        if self.flip_horizontal {
            t = [s - t[2], t[1], s - t[0], t[3]];
        }
        if self.flip_vertical {
            t = [t[0], s - t[3], t[2], s - t[1]];
        }
        // A clockwise quarter turn of a side-s square takes (x, y) to (s - y, x).
        for _ in 0..self.quarter_turns % 4 {
            t = [s - t[3], t[0], s - t[1], t[2]];
        }
        Some(t.map(|v| v as f32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tight box of the pixels labelled `label`.
    fn tight(mask: &GrayImage, label: u8) -> Option<[f32; 4]> {
        let mut b: Option<[u32; 4]> = None;
        for (x, y, p) in mask.enumerate_pixels() {
            if p.0[0] == label {
                b = Some(match b {
                    None => [x, y, x + 1, y + 1],
                    Some(b) => [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)],
                });
            }
        }
        b.map(|b| b.map(|v| v as f32))
    }

    #[test]
    fn boxes_and_masks_move_together() {
        let size = 64;
        let boxes = [[10f32, 6., 30., 22.], [40., 40., 58., 61.]];
        let mut mask = GrayImage::from_pixel(size, size, Luma([0]));
        for (k, b) in boxes.iter().enumerate() {
            for y in b[1] as u32..b[3] as u32 {
                for x in b[0] as u32..b[2] as u32 {
                    mask.put_pixel(x, y, Luma([k as u8 + 1]));
                }
            }
        }
        let policy = AugmentPolicy {
            flip_horizontal: true,
            flip_vertical: true,
            zoom: (0.7, 1.6),
            rotate90: true,
            colour: 0.3,
        };
        let mut kinds = std::collections::HashSet::new();
        for view in 1..40 {
            let a = Augment::draw(&policy, view);
            kinds.insert((
                a.flip_horizontal,
                a.flip_vertical,
                a.zoom > 1.0,
                a.quarter_turns,
            ));
            let m = a.mask(&mask, 255);
            assert!(
                m.pixels().all(|p| [0, 1, 2, 255].contains(&p.0[0])),
                "labels blended"
            );
            for (k, b) in boxes.iter().enumerate() {
                let moved = a.boxed(*b, size, 0.0);
                let seen = tight(&m, k as u8 + 1);
                match (moved, seen) {
                    (Some(mb), Some(sb)) => {
                        for (u, v) in mb.iter().zip(sb) {
                            assert!(
                                (u - v).abs() <= 1.6,
                                "view {view} {a:?}: box {mb:?} mask {sb:?}"
                            );
                        }
                    }
                    // A sliver at the window's edge may round away on one side only.
                    (Some(mb), None) | (None, Some(mb)) => {
                        assert!(
                            (mb[2] - mb[0]).min(mb[3] - mb[1]) < 2.0,
                            "view {view}: {mb:?}"
                        );
                    }
                    (None, None) => {}
                }
            }
        }
        assert!(
            kinds.len() >= 12,
            "too few kinds of augmentation drawn: {kinds:?}"
        );
        assert_eq!(Augment::draw(&policy, 0), Augment::IDENTITY);
        assert_eq!(Augment::draw(&policy, 7), Augment::draw(&policy, 7));
    }

    #[test]
    fn quarter_turns_compose_and_colour_leaves_masks_alone() {
        let img = RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 16, y as u8 * 16, 90]));
        let turn = |k| Augment {
            quarter_turns: k,
            ..Augment::IDENTITY
        };
        // Clockwise: the top-left corner goes to the top-right.
        assert_eq!(turn(1).image(&img).get_pixel(15, 0), img.get_pixel(0, 0));
        assert_eq!(
            turn(1).boxed([1.0, 2.0, 5.0, 4.0], 16, 0.5),
            Some([12.0, 1.0, 14.0, 5.0])
        );
        let twice = turn(1).image(&turn(1).image(&img));
        assert_eq!(twice, turn(2).image(&img));
        assert_eq!(turn(3).image(&turn(1).image(&img)), img);
        let grey_out = Augment {
            colour: [1.0, 1.0, 0.0],
            ..Augment::IDENTITY
        }
        .image(&img);
        assert!(grey_out
            .pixels()
            .all(|p| p.0[0].abs_diff(p.0[1]) <= 1 && p.0[1].abs_diff(p.0[2]) <= 1));
        let mean = |im: &RgbImage| im.pixels().map(|p| p.0[1] as f64).sum::<f64>() / 256.0;
        let brighter = Augment {
            colour: [1.3, 1.0, 1.0],
            ..Augment::IDENTITY
        };
        assert!(mean(&brighter.image(&img)) > mean(&img) * 1.2);
        let mask = GrayImage::from_fn(16, 16, |x, _| Luma([x as u8 % 3]));
        assert_eq!(brighter.mask(&mask, 255), mask);
    }

    #[test]
    fn zooming_out_pads_and_flips_mirror() {
        let img = RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 0]));
        let out = Augment {
            zoom: 0.5,
            at: (0.5, 0.5),
            ..Augment::IDENTITY
        }
        .image(&img);
        assert_eq!(*out.get_pixel(0, 0), pad_colour());
        assert_eq!(*out.get_pixel(31, 31), pad_colour());
        assert_ne!(*out.get_pixel(16, 16), pad_colour());
        let flipped = Augment {
            flip_horizontal: true,
            ..Augment::IDENTITY
        };
        assert_eq!(flipped.image(&img).get_pixel(0, 3), img.get_pixel(31, 3));
        assert_eq!(
            flipped.boxed([2.0, 3.0, 10.0, 9.0], 32, 0.5),
            Some([22.0, 3.0, 30.0, 9.0])
        );
        // A box the window leaves out is dropped.
        let zoom_in = Augment {
            zoom: 2.0,
            at: (0.0, 0.0),
            ..Augment::IDENTITY
        };
        assert_eq!(zoom_in.boxed([20.0, 20.0, 30.0, 30.0], 32, 0.5), None);
        assert_eq!(
            zoom_in.boxed([2.0, 2.0, 6.0, 8.0], 32, 0.5),
            Some([4.0, 4.0, 12.0, 16.0])
        );
    }
}
