//! How an image becomes a square model input, and how results map back to the image.
//!
//! An example is a window of an image (the whole image, or one tile of a large one) scaled so
//! that its longer side fills the input, placed at the top-left corner, the rest padded. The
//! padding takes the normalisation mean, so that it is zero after normalising: the backbone
//! sees "nothing" there rather than a black border. A [`Placement`] records the window and
//! the scale, so boxes and masks go both ways.

use anyhow::Result;
use candle_core::{Device, Tensor};
use image::imageops::{self, FilterType};
use image::{GrayImage, Luma, Rgb, RgbImage};

use crate::backbone::{IMAGENET_MEAN, IMAGENET_STD};

/// A window of an image and how it sits in the model input.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// `[x0, y0, w, h]` of the original image.
    pub crop: [u32; 4],
    /// Input pixels per original pixel.
    pub scale: f64,
}

/// The padding colour: the normalisation mean, which becomes zero.
pub fn pad_colour() -> Rgb<u8> {
    Rgb(IMAGENET_MEAN.map(|m| (m * 255.0).round() as u8))
}

/// Tile starts along one axis: the fewest tiles that overlap by at least `overlap`, spread
/// evenly so that the last one ends at the border.
pub fn tile_starts(len: u32, tile: u32, overlap: u32) -> Vec<u32> {
    if len <= tile {
        return vec![0];
    }
    let step = (tile - overlap.min(tile - 1)).max(1);
    let n = (len - tile).div_ceil(step) + 1;
    (0..n)
        .map(|i| ((i as u64 * (len - tile) as u64 + (n as u64 - 1) / 2) / (n as u64 - 1)) as u32)
        .collect()
}

impl Placement {
    /// The whole `width x height` image, its longer side scaled to `size`.
    pub fn whole(width: u32, height: u32, size: u32) -> Self {
        let longest = width.max(height).max(1);
        Self {
            crop: [0, 0, width, height],
            scale: size as f64 / longest as f64,
        }
    }

    /// Overlapping `tile`-pixel windows covering a `width x height` image at native scale,
    /// each resized to `size`; row by row.
    pub fn tiles(width: u32, height: u32, tile: u32, overlap: u32, size: u32) -> Vec<Self> {
        let mut out = Vec::new();
        for y in tile_starts(height, tile, overlap) {
            for x in tile_starts(width, tile, overlap) {
                out.push(Self {
                    crop: [x, y, tile.min(width), tile.min(height)],
                    scale: size as f64 / tile as f64,
                });
            }
        }
        out
    }

    /// The window's extent in the input, `(w, h)`, at most `size`.
    pub fn extent(&self, size: u32) -> (u32, u32) {
        let side = |v: u32| ((v as f64 * self.scale).round() as u32).clamp(1, size);
        (side(self.crop[2]), side(self.crop[3]))
    }

    /// The window of `image` as a `size x size` input: resized (triangle filter), placed at
    /// the top-left corner, padded with [`pad_colour`].
    pub fn render(&self, image: &RgbImage, size: u32) -> RgbImage {
        let [x, y, w, h] = self.crop;
        let (nw, nh) = self.extent(size);
        let crop = imageops::crop_imm(image, x, y, w, h).to_image();
        let resized = imageops::resize(&crop, nw, nh, FilterType::Triangle);
        let mut canvas = RgbImage::from_pixel(size, size, pad_colour());
        imageops::replace(&mut canvas, &resized, 0, 0);
        canvas
    }

    /// The window of a class mask as a `size x size` target: nearest-neighbour resized (a
    /// label is never blended into another), padded with `fill` (the ignore index).
    pub fn render_mask(&self, mask: &GrayImage, size: u32, fill: u8) -> GrayImage {
        let [x, y, w, h] = self.crop;
        let (nw, nh) = self.extent(size);
        let crop = imageops::crop_imm(mask, x, y, w, h).to_image();
        let resized = imageops::resize(&crop, nw, nh, FilterType::Nearest);
        let mut canvas = GrayImage::from_pixel(size, size, Luma([fill]));
        imageops::replace(&mut canvas, &resized, 0, 0);
        canvas
    }

    /// A box `[x, y, w, h]` of the original image as `[x0, y0, x1, y1]` in input pixels,
    /// clipped to the window; `None` if less than `min_visible` of its area is inside.
    pub fn box_to_input(&self, [x, y, w, h]: [f64; 4], min_visible: f64) -> Option<[f32; 4]> {
        let [cx, cy, cw, ch] = self.crop.map(|v| v as f64);
        let (x0, y0) = (x.max(cx), y.max(cy));
        let (x1, y1) = ((x + w).min(cx + cw), (y + h).min(cy + ch));
        if x1 <= x0 || y1 <= y0 || (x1 - x0) * (y1 - y0) < min_visible * w * h {
            return None;
        }
        let s = self.scale;
        Some([
            ((x0 - cx) * s) as f32,
            ((y0 - cy) * s) as f32,
            ((x1 - cx) * s) as f32,
            ((y1 - cy) * s) as f32,
        ])
    }

    /// A box in input pixels `[x0, y0, x1, y1]` back in original image pixels `[x, y, w, h]`,
    /// clipped to the window.
    pub fn to_original(&self, xyxy: [f32; 4]) -> [f64; 4] {
        let s = self.scale;
        let [cx, cy, cw, ch] = self.crop.map(|v| v as f64);
        let x0 = (xyxy[0] as f64 / s + cx).max(cx);
        let y0 = (xyxy[1] as f64 / s + cy).max(cy);
        let x1 = (xyxy[2] as f64 / s + cx).min(cx + cw);
        let y1 = (xyxy[3] as f64 / s + cy).min(cy + ch);
        [x0, y0, (x1 - x0).max(0.0), (y1 - y0).max(0.0)]
    }

    /// Whether a box `[x, y, w, h]` of the original (`width x height`) image comes within
    /// `margin` pixels of an edge of this window that lies inside the image. There the
    /// object may go on into the neighbouring tile, so the box may be only the part of it
    /// this window shows; an edge on the image's border cuts nothing.
    pub fn reaches_inner_edge(
        &self,
        [x, y, w, h]: [f64; 4],
        width: u32,
        height: u32,
        margin: f64,
    ) -> bool {
        let [cx, cy, cw, ch] = self.crop.map(|v| v as f64);
        (cx > 0.0 && x <= cx + margin)
            || (cy > 0.0 && y <= cy + margin)
            || (cx + cw < width as f64 && x + w >= cx + cw - margin)
            || (cy + ch < height as f64 && y + h >= cy + ch - margin)
    }
}

/// An RGB input as the backbone expects it: `[3, H, W]`, normalised with the ImageNet mean and
/// standard deviation that ViT and DINOv2 checkpoints were trained with.
pub fn to_tensor(image: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = image.dimensions();
    let n = (w * h) as usize;
    let mut data = vec![0f32; 3 * n];
    for (i, p) in image.pixels().enumerate() {
        for c in 0..3 {
            data[c * n + i] = (p.0[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    Ok(Tensor::from_vec(data, (3, h as usize, w as usize), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_image_with_overlap() {
        assert_eq!(tile_starts(100, 224, 64), vec![0]);
        assert_eq!(tile_starts(400, 224, 64), vec![0, 88, 176]);
        assert_eq!(tile_starts(400, 224, 16), vec![0, 176]);
        let w = tile_starts(2299, 320, 64);
        assert_eq!((w[0], *w.last().unwrap()), (0, 2299 - 320));
        assert!(w.windows(2).all(|p| p[1] - p[0] <= 256 && p[1] > p[0]));
        let tiles = Placement::tiles(400, 300, 224, 64, 112);
        assert_eq!(tiles.len(), 3 * 2);
        assert_eq!(tiles[1].crop, [88, 0, 224, 224]);
        assert_eq!(tiles[0].scale, 0.5);
    }

    #[test]
    fn only_edges_inside_the_image_cut_a_box() {
        // The middle tile of a row of three across a 400 x 224 image.
        let t = Placement {
            crop: [88, 0, 224, 224],
            scale: 1.0,
        };
        let inner = |b| t.reaches_inner_edge(b, 400, 224, 2.0);
        // Against the left and right edges, which neighbours share: cut.
        assert!(inner([88.0, 50.0, 30.0, 30.0]));
        assert!(inner([90.0, 50.0, 30.0, 30.0]));
        assert!(inner([282.0, 50.0, 30.0, 30.0]));
        // Against the top and bottom, the image's own border: whole.
        assert!(!inner([150.0, 0.0, 30.0, 30.0]));
        assert!(!inner([150.0, 194.0, 30.0, 224.0 - 194.0]));
        // Inside, beyond the margin.
        assert!(!inner([91.0, 50.0, 30.0, 30.0]));
        assert!(!inner([150.0, 50.0, 130.0, 30.0]));
        // A tile at the image's corner has inner edges only to its right and below.
        let corner = Placement {
            crop: [0, 0, 224, 224],
            scale: 1.0,
        };
        assert!(!corner.reaches_inner_edge([0.0, 0.0, 30.0, 30.0], 400, 400, 2.0));
        assert!(corner.reaches_inner_edge([0.0, 200.0, 30.0, 24.0], 400, 400, 2.0));
        assert!(!corner.reaches_inner_edge([0.0, 200.0, 30.0, 24.0], 400, 224, 2.0));
    }

    #[test]
    fn boxes_map_back_to_the_original_image() {
        let s = Placement {
            crop: [100, 50, 320, 320],
            scale: 224.0 / 320.0,
        };
        let back = s.to_original([7.0, 14.0, 70.0, 84.0]);
        let want = [110.0, 70.0, 90.0, 100.0];
        for (g, w) in back.iter().zip(want) {
            assert!((g - w).abs() < 1e-3, "{back:?}");
        }
        let there = s.box_to_input(want, 0.5).unwrap();
        for (g, w) in there.iter().zip([7.0, 14.0, 70.0, 84.0]) {
            assert!((g - w).abs() < 1e-3, "{there:?}");
        }
        // Mostly outside the window: dropped.
        assert_eq!(s.box_to_input([0.0, 0.0, 110.0, 100.0], 0.4), None);
    }

    #[test]
    fn an_image_and_its_mask_are_placed_alike_and_padded() {
        // A 40x20 image whose right half is red, with a mask labelling that half 3.
        let img = RgbImage::from_fn(40, 20, |x, _| {
            if x >= 20 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let mask = GrayImage::from_fn(40, 20, |x, _| Luma([if x >= 20 { 3 } else { 1 }]));
        let p = Placement::whole(40, 20, 28);
        assert_eq!(p.scale, 28.0 / 40.0);
        let input = p.render(&img, 28);
        let target = p.render_mask(&mask, 28, 255);
        assert_eq!(input.dimensions(), (28, 28));
        // Rows below the image (14 of 28 are used) are padding in both.
        assert_eq!(*input.get_pixel(5, 20), pad_colour());
        assert_eq!(target.get_pixel(5, 20).0[0], 255);
        // The halves stay where they were, and labels stay labels.
        assert_eq!(target.get_pixel(2, 5).0[0], 1);
        assert_eq!(target.get_pixel(25, 5).0[0], 3);
        assert!(input.get_pixel(25, 5).0[0] > 200 && input.get_pixel(2, 5).0[2] > 200);
        assert!(target.pixels().all(|p| [1, 3, 255].contains(&p.0[0])));
        let t = to_tensor(&input, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [3, 28, 28]);
        // Padding normalises to zero.
        let v: Vec<f32> = t.get(1).unwrap().get(20).unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.abs() < 0.01), "{v:?}");
    }
}
