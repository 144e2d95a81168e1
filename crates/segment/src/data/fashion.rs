//! `fashion-scenes`: a larger segmentation set for data-size studies, composed from real
//! product photos. Debian's `dataset-fashion-mnist` ships Zalando's Fashion-MNIST (60,000
//! training and 10,000 test images of 28 x 28, 10 classes, MIT).
//!
//! A scene is a 224 x 224 canvas with a textured background (smooth value noise, grey levels
//! 20 to 110, so that the background is neither black nor one level) and 2 to 5 items, each
//! an image of the class file scaled to 36 to 110 pixels (log-uniform, bilinear), tinted with
//! a random colour and placed wholly inside the canvas; later items cover earlier ones. An
//! item's pixels whose scaled intensity is at least [`THRESHOLD`] belong to its class (label
//! 1 + the Fashion-MNIST class), the rest of the canvas is background (0). Training scenes
//! draw their items from the training file, validation scenes from the test file, each scene
//! from its own seeded stream.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use downstream_core::vision::generated::SceneSpec;
use downstream_core::vision::io::save_png;
use downstream_core::vision::mask::save_mask;
use image::imageops::{self, FilterType};
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// The data set's name (`--data fashion-scenes`, `segment fetch fashion-scenes`).
pub const NAME: &str = "fashion-scenes";

/// The Fashion-MNIST classes, in label order.
pub const ITEMS: [&str; 10] = [
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// An item's pixel belongs to it from this scaled intensity (of 255) up.
pub const THRESHOLD: u8 = 40;

/// Scenes written by default: several thousand to train, a few hundred to validate.
pub fn default_spec() -> SceneSpec {
    SceneSpec {
        train: 3000,
        val: 500,
        seed: 0,
        size: 224,
    }
}

/// Changes whenever the scenes change.
const VERSION: u32 = 1;

/// The class names, background first.
pub fn classes() -> Vec<String> {
    std::iter::once("background")
        .chain(ITEMS)
        .map(String::from)
        .collect()
}

/// An IDX file of Fashion-MNIST: `(count, rows, cols, bytes)` for images, `(count, 1, 1,
/// bytes)` for labels.
fn read_idx(path: &Path, images: bool) -> Result<(usize, usize, usize, Vec<u8>)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{}: not a gzip file", path.display()))?;
    let be = |i: usize| -> Option<usize> {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let (magic, header) = if images { (0x803, 16) } else { (0x801, 8) };
    if be(0) != Some(magic) {
        bail!(
            "{}: not an IDX {} file",
            path.display(),
            if images { "image" } else { "label" }
        );
    }
    let count = be(1).context("truncated header")?;
    let (rows, cols) = if images {
        (
            be(2).context("truncated header")?,
            be(3).context("truncated header")?,
        )
    } else {
        (1, 1)
    };
    let data = bytes.split_off(header.min(bytes.len()));
    if data.len() != count * rows * cols {
        bail!(
            "{}: {} bytes of data for {count} entries of {rows}x{cols}",
            path.display(),
            data.len()
        );
    }
    Ok((count, rows, cols, data))
}

/// Items of one Fashion-MNIST file pair.
struct Items {
    side: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl Items {
    fn read(raw: &Path, prefix: &str) -> Result<Self> {
        let (n, rows, cols, pixels) =
            read_idx(&raw.join(format!("{prefix}-images-idx3-ubyte.gz")), true)?;
        let (m, _, _, labels) =
            read_idx(&raw.join(format!("{prefix}-labels-idx1-ubyte.gz")), false)?;
        if n != m || rows != cols || n == 0 {
            bail!(
                "{}: {n} images of {rows}x{cols} but {m} labels",
                raw.display()
            );
        }
        if let Some(l) = labels.iter().find(|&&l| l as usize >= ITEMS.len()) {
            bail!("{}: label {l} is not a Fashion-MNIST class", raw.display());
        }
        Ok(Self {
            side: rows,
            pixels,
            labels,
        })
    }

    fn image(&self, i: usize) -> GrayImage {
        let s = self.side;
        GrayImage::from_raw(
            s as u32,
            s as u32,
            self.pixels[i * s * s..(i + 1) * s * s].to_vec(),
        )
        .expect("the item's own size")
    }
}

/// Smooth noise: bilinear interpolation of a coarse random grid.
fn background(rng: &mut ChaCha8Rng, size: u32) -> RgbImage {
    let cells = 6usize;
    let grid: Vec<f32> = (0..(cells + 1) * (cells + 1))
        .map(|_| rng.random_range(20.0..110.0))
        .collect();
    let tint = [
        rng.random_range(0.8..1.2),
        rng.random_range(0.8..1.2),
        rng.random_range(0.8..1.2),
    ];
    RgbImage::from_fn(size, size, |x, y| {
        let (u, v) = (
            x as f32 / size as f32 * cells as f32,
            y as f32 / size as f32 * cells as f32,
        );
        let (i, j) = (u.floor() as usize, v.floor() as usize);
        let (fu, fv) = (u - i as f32, v - j as f32);
        let at = |a: usize, b: usize| grid[b * (cells + 1) + a];
        let g = (at(i, j) * (1.0 - fu) + at(i + 1, j) * fu) * (1.0 - fv)
            + (at(i, j + 1) * (1.0 - fu) + at(i + 1, j + 1) * fu) * fv;
        Rgb(tint.map(|t| (g * t).clamp(0.0, 255.0) as u8))
    })
}

/// Scene `index` drawn from `items` with `rng`: the image and its class mask.
fn compose(items: &Items, rng: &mut ChaCha8Rng, size: u32) -> (RgbImage, GrayImage) {
    let mut image = background(rng, size);
    let mut mask = GrayImage::new(size, size);
    let (lo, hi) = (36f64.ln(), 110f64.min(size as f64).ln());
    for _ in 0..rng.random_range(2..=5) {
        let i = rng.random_range(0..items.labels.len());
        let side = rng.random_range(lo..hi).exp().round() as u32;
        let item = imageops::resize(&items.image(i), side, side, FilterType::Triangle);
        let tint = [
            rng.random_range(0.4..1.0f32),
            rng.random_range(0.4..1.0f32),
            rng.random_range(0.4..1.0f32),
        ];
        let (x0, y0) = (
            rng.random_range(0..=size - side),
            rng.random_range(0..=size - side),
        );
        let class = items.labels[i] + 1;
        for (x, y, p) in item.enumerate_pixels() {
            let v = p.0[0];
            if v < THRESHOLD {
                continue;
            }
            image.put_pixel(x0 + x, y0 + y, Rgb(tint.map(|t| (v as f32 * t) as u8)));
            mask.put_pixel(x0 + x, y0 + y, Luma([class]));
        }
    }
    (image, mask)
}

/// Writes the scenes of `spec` from the raw files in `raw` into `out/{train,val}` (if not
/// already there) and returns those two folders.
pub fn prepare(raw: &Path, out: &Path, spec: &SceneSpec) -> Result<(PathBuf, PathBuf)> {
    let dirs = (out.join("train"), out.join("val"));
    let stamp = format!("fashion scenes {VERSION} {}", serde_json::to_string(spec)?);
    if downstream_core::atomic::completed(out).as_deref() == Some(stamp.as_str()) {
        return Ok(dirs);
    }
    downstream_core::atomic::build_dir(out, &stamp, |root| {
        for (split, prefix, count, tag) in [
            ("train", "train", spec.train, 0u64),
            ("val", "t10k", spec.val, 1),
        ] {
            let items = Items::read(raw, prefix)?;
            let dir = root.join(split);
            (0..count)
                .into_par_iter()
                .try_for_each(|index| -> Result<()> {
                    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
                    rng.set_stream(tag << 63 | index as u64);
                    let (image, mask) = compose(&items, &mut rng, spec.size);
                    let name = format!("{index:06}.png");
                    save_png(
                        &dir.join("images").join(&name),
                        &image::DynamicImage::ImageRgb8(image),
                    )?;
                    save_mask(&dir.join("masks").join(&name), &mask, None)
                })?;
            let classes = classes().join("\n") + "\n";
            downstream_core::atomic::write(&dir.join("classes.txt"), classes.as_bytes())?;
        }
        Ok(())
    })?;
    Ok(dirs)
}

/// Fetches the raw files (on first use) and composes the default scenes; returns the training
/// and validation folders.
pub fn ensure() -> Result<(PathBuf, PathBuf)> {
    let manifest = downstream_hub::manifest::find_dataset(NAME)?;
    let raw = downstream_hub::ensure(&manifest, &downstream_hub::datasets_root())?;
    prepare(
        &raw,
        &downstream_hub::datasets_root().join(format!("{NAME}-composed")),
        &default_spec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_idx(path: &Path, header: &[u32], data: &[u8]) {
        let file = std::fs::File::create(path).unwrap();
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        for v in header {
            gz.write_all(&v.to_be_bytes()).unwrap();
        }
        gz.write_all(data).unwrap();
        gz.finish().unwrap();
    }

    /// Six 28x28 items: a bright square of side 10 + 2i, class i.
    fn raw(dir: &Path) {
        let mut pixels = Vec::new();
        for i in 0..6u32 {
            let s = 10 + 2 * i;
            pixels.extend((0..28 * 28).map(|k| {
                let (x, y) = (k % 28, k / 28);
                if x < s && y < s {
                    200
                } else {
                    5
                }
            }));
        }
        let labels: Vec<u8> = (0..6).collect();
        for prefix in ["train", "t10k"] {
            write_idx(
                &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
                &[0x803, 6, 28, 28],
                &pixels,
            );
            write_idx(
                &dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
                &[0x801, 6],
                &labels,
            );
        }
    }

    #[test]
    fn scenes_label_exactly_the_item_pixels_above_the_threshold() {
        let tmp = tempfile::tempdir().unwrap();
        raw(tmp.path());
        let spec = SceneSpec {
            train: 5,
            val: 2,
            seed: 1,
            size: 128,
        };
        let (train, val) = prepare(tmp.path(), &tmp.path().join("out"), &spec).unwrap();
        let found = super::super::layout::read(&train, super::super::layout::Split::Train).unwrap();
        assert_eq!(found.pairs.len(), 5);
        assert_eq!(found.classes.unwrap(), classes());
        for p in &found.pairs {
            let mask = downstream_core::vision::mask::open_mask(p.mask.as_ref().unwrap())
                .unwrap()
                .labels;
            let image = image::open(&p.image).unwrap().to_rgb8();
            let labelled: Vec<u8> = mask.pixels().map(|p| p.0[0]).filter(|&l| l > 0).collect();
            assert!(!labelled.is_empty());
            assert!(labelled.iter().all(|&l| (1..=6).contains(&l)));
            // Labelled pixels carry the item (bright), the rest the background (dim).
            for (m, px) in mask.pixels().zip(image.pixels()) {
                let brightest = *px.0.iter().max().unwrap();
                if m.0[0] > 0 {
                    assert!(brightest >= (THRESHOLD as f32 * 0.4) as u8);
                } else {
                    assert!(brightest <= 132, "background pixel {px:?}");
                }
            }
        }
        assert_eq!(std::fs::read_dir(val.join("images")).unwrap().count(), 2);
        // A file that is not IDX is refused, naming it.
        std::fs::write(tmp.path().join("t10k-labels-idx1-ubyte.gz"), b"nope").unwrap();
        let err = format!(
            "{:#}",
            prepare(tmp.path(), &tmp.path().join("again"), &spec).unwrap_err()
        );
        assert!(err.contains("t10k-labels-idx1-ubyte.gz"), "{err}");
    }
}
