//! Class masks as files: one label per pixel, stored either as grey levels (the level is the
//! class id) or as a palette PNG (the palette index is the class id, as Pascal VOC stores
//! them). A palette PNG is read by its indices, never by the colours they stand for; a mask
//! in full colour is refused rather than guessed at.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{ColorType, GrayImage};

/// A mask as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMask {
    pub labels: GrayImage,
    /// The palette of a palette PNG (RGB per index), absent for grey masks.
    pub palette: Option<Vec<[u8; 3]>>,
}

/// Reads a class mask (grey levels, or a palette PNG by index).
pub fn open_mask(path: &Path) -> Result<StoredMask> {
    if let Some(indexed) = open_indexed_png(path)? {
        return Ok(indexed);
    }
    let image = super::io::open(path)?;
    let labels = match image.color() {
        ColorType::L8 => image.into_luma8(),
        ColorType::L16 => {
            let wide = image.into_luma16();
            if let Some(v) = wide.pixels().map(|p| p.0[0]).find(|&v| v > 255) {
                bail!(
                    "{}: label {v} does not fit the 0-255 range of class masks",
                    path.display()
                );
            }
            GrayImage::from_fn(wide.width(), wide.height(), |x, y| {
                image::Luma([wide.get_pixel(x, y).0[0] as u8])
            })
        }
        other => bail!(
            "{}: a {other:?} image is not a class mask: expected grey levels (one class id per \
             pixel) or a palette PNG",
            path.display()
        ),
    };
    Ok(StoredMask {
        labels,
        palette: None,
    })
}

/// The indices and palette of a palette PNG; `None` for any other file.
fn open_indexed_png(path: &Path) -> Result<Option<StoredMask>> {
    let file = File::open(path).with_context(|| format!("opening mask {}", path.display()))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    // Anything that is not a PNG is left to the general reader.
    let Ok(mut reader) = decoder.read_info() else {
        return Ok(None);
    };
    let info = reader.info();
    if info.color_type != png::ColorType::Indexed {
        return Ok(None);
    }
    let (w, h) = (info.width, info.height);
    super::io::check_side(path, w, h)?;
    let depth = info.bit_depth as u8;
    let palette: Vec<[u8; 3]> = info
        .palette
        .as_ref()
        .map(|p| p.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect())
        .with_context(|| format!("{}: a palette PNG without a palette", path.display()))?;
    let size = reader
        .output_buffer_size()
        .with_context(|| format!("{}: image too large", path.display()))?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .with_context(|| format!("reading mask {}", path.display()))?;
    // Indices narrower than a byte are packed, high bits first.
    let per_byte = 8 / depth as usize;
    let mask = (1u16 << depth) as u8 - 1;
    let mut labels = GrayImage::new(w, h);
    for y in 0..h as usize {
        let row = &buf[y * frame.line_size..(y + 1) * frame.line_size];
        for x in 0..w as usize {
            let byte = row[x / per_byte];
            let shift = 8 - depth as usize * (x % per_byte + 1);
            labels.put_pixel(x as u32, y as u32, image::Luma([(byte >> shift) & mask]));
        }
    }
    Ok(Some(StoredMask {
        labels,
        palette: Some(palette),
    }))
}

/// Writes a mask as a grey-level PNG, or as a palette PNG with `palette`, atomically.
pub fn save_mask(path: &Path, labels: &GrayImage, palette: Option<&[[u8; 3]]>) -> Result<()> {
    let Some(palette) = palette else {
        return super::io::save_png(path, &image::DynamicImage::ImageLuma8(labels.clone()));
    };
    crate::atomic::write_with(path, |w| {
        let mut encoder = png::Encoder::new(w, labels.width(), labels.height());
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette(palette.iter().flatten().copied().collect::<Vec<u8>>());
        let mut writer = encoder.write_header()?;
        writer.write_image_data(labels.as_raw())?;
        writer.finish()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn hostile_masks_load_or_fail_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let labels = GrayImage::from_fn(12, 9, |x, y| image::Luma([((x + y) % 3) as u8]));
        for (name, palette) in [
            (
                "palette.png",
                Some(vec![[0, 0, 0], [200, 0, 0], [0, 200, 0]]),
            ),
            ("grey.png", None),
        ] {
            let path = dir.path().join(name);
            save_mask(&path, &labels, palette.as_deref()).unwrap();
            let valid = std::fs::read(&path).unwrap();
            crate::faults::mutate::never_panics(name, name, &valid, 5, 300, |p: &Path| {
                open_mask(p).map(|m| m.labels.len())
            });
        }
    }
    use super::*;

    #[test]
    fn a_mask_claiming_a_poster_size_is_refused_before_its_pixels_are_read() {
        let dir = tempfile::tempdir().unwrap();
        for (name, indexed) in [("palette.png", true), ("grey.png", false)] {
            let path = dir.path().join(name);
            let png = crate::vision::io::claimed_png(60_000, 80_000, indexed);
            std::fs::write(&path, png).unwrap();
            let err = match open_mask(&path) {
                Ok(_) => panic!("{name}: a bomb loaded"),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains(name) && err.contains("60000 x 80000"), "{err}");
        }
    }

    #[test]
    fn grey_and_palette_masks_round_trip_by_label() {
        let dir = tempfile::tempdir().unwrap();
        let labels = GrayImage::from_fn(7, 5, |x, y| image::Luma([((x + y) % 4) as u8 * 60 % 255]));
        let grey = dir.path().join("grey.png");
        save_mask(&grey, &labels, None).unwrap();
        assert_eq!(
            open_mask(&grey).unwrap(),
            StoredMask {
                labels: labels.clone(),
                palette: None
            }
        );
        let palette: Vec<[u8; 3]> = (0..=255u8).map(|i| [i, 255 - i, i / 2]).collect();
        let indexed = dir.path().join("indexed.png");
        save_mask(&indexed, &labels, Some(&palette)).unwrap();
        let back = open_mask(&indexed).unwrap();
        assert_eq!(back.labels, labels, "indices, not colours");
        assert_eq!(back.palette.unwrap(), palette);
    }

    #[test]
    fn a_two_bit_palette_png_unpacks_and_a_colour_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("packed.png");
        // 5 pixels of 2 bits per row: 0 1 2 3 | 1 (high bits first).
        let rows = [[0b0001_1011u8, 0b0100_0000], [0b1110_0100, 0b1100_0000]];
        {
            let file = File::create(&path).unwrap();
            let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 5, 2);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Two);
            enc.set_palette(vec![0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&rows.concat()).unwrap();
        }
        let m = open_mask(&path).unwrap();
        let got: Vec<u8> = m.labels.pixels().map(|p| p.0[0]).collect();
        assert_eq!(got, [0, 1, 2, 3, 1, 3, 2, 1, 0, 3]);
        let rgb = dir.path().join("photo.png");
        image::RgbImage::new(3, 3).save(&rgb).unwrap();
        let err = format!("{:#}", open_mask(&rgb).unwrap_err());
        assert!(
            err.contains("photo.png") && err.contains("not a class mask"),
            "{err}"
        );
    }
}
