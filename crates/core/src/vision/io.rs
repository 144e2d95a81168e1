//! Image files in and out: reading any format the `image` crate knows by its content (a
//! mislabelled extension still loads), errors that name the file, PNGs written atomically, and
//! the image files named on a command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::codecs::png::PngEncoder;
use image::{DynamicImage, ImageEncoder, ImageReader, RgbImage};

/// Extensions taken as images when a folder is listed.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// Decodes `path`, whatever its extension says.
pub fn open(path: &Path) -> Result<DynamicImage> {
    ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(anyhow::Error::from)
        .and_then(|r| Ok(r.decode()?))
        .with_context(|| format!("reading image {}", path.display()))
}

/// [`open`] as 8-bit RGB.
pub fn open_rgb(path: &Path) -> Result<RgbImage> {
    Ok(open(path)?.to_rgb8())
}

/// Writes `image` as a PNG at `path`, atomically.
pub fn save_png(path: &Path, image: &DynamicImage) -> Result<()> {
    crate::atomic::write_with(path, |w| {
        PngEncoder::new(w).write_image(
            image.as_bytes(),
            image.width(),
            image.height(),
            image.color().into(),
        )?;
        Ok(())
    })
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image files named directly or found in folders (by extension, sorted per folder), in the
/// order given; an error if a name is neither or nothing is found.
pub fn image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("reading {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_image(p))
                .collect();
            found.sort();
            files.extend(found);
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            bail!("{}: no such image or folder", input.display());
        }
    }
    if files.is_empty() {
        bail!("no images found in {:?}", inputs);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_list_their_images_sorted_and_bad_names_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.PNG", "a.jpg", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let extra = dir.path().join("notes.txt");
        let files = image_files(&[dir.path().to_path_buf(), extra.clone()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.jpg", "b.PNG", "notes.txt"]);
        let err = image_files(&[dir.path().join("missing")]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        assert!(image_files(&[empty.path().to_path_buf()]).is_err());
    }

    #[test]
    fn a_png_round_trips_and_an_unreadable_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/mask.png");
        let mask = image::GrayImage::from_fn(5, 3, |x, y| image::Luma([(x + 10 * y) as u8]));
        save_png(&path, &DynamicImage::ImageLuma8(mask.clone())).unwrap();
        assert_eq!(open(&path).unwrap().to_luma8(), mask);
        let bad = dir.path().join("broken.png");
        std::fs::write(&bad, b"not a png").unwrap();
        let err = format!("{:#}", open_rgb(&bad).unwrap_err());
        assert!(err.contains("broken.png"), "{err}");
    }
}
