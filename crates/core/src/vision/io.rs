//! Image files in and out: reading any format the `image` crate knows by its content (a
//! mislabelled extension still loads), with a cap on the size a header may claim, errors that
//! name the file, PNGs written atomically, and the image files named on a command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::codecs::png::PngEncoder;
use image::{DynamicImage, ImageEncoder, ImageReader, RgbImage};

/// Extensions taken as images when a folder is listed.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// An error if the image at `path` claims more than the cap on either side; the cap.
pub(crate) fn check_side(path: &Path, w: u32, h: u32) -> Result<u32> {
    let cap = crate::limits::IMAGE_SIDE;
    let side = u32::try_from(cap.get()).unwrap_or(u32::MAX);
    if w > side || h > side {
        bail!(
            "{}: the image claims {w} x {h} pixels, more than the {side} a side this program \
             decodes (set {} to allow larger images)",
            path.display(),
            cap.var
        );
    }
    Ok(side)
}

/// Decodes `path`, whatever its extension says; an image larger than the cap
/// ([`crate::limits::IMAGE_SIDE`]) on either
/// side is an error naming its size and the setting that allows it.
pub fn open(path: &Path) -> Result<DynamicImage> {
    let context = || format!("reading image {}", path.display());
    let reader = || -> Result<_> { Ok(ImageReader::open(path)?.with_guessed_format()?) };
    let (w, h) = reader()
        .and_then(|r| Ok(r.into_dimensions()?))
        .with_context(context)?;
    let side = check_side(path, w, h)?;
    let mut r = reader().with_context(context)?;
    // The decoder's own allocation cap, for what the header does not tell (16-bit RGBA).
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(u64::from(side) * u64::from(side) * 8);
    r.limits(limits);
    r.decode()
        .map_err(anyhow::Error::from)
        .with_context(context)
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

/// Refuses a data file that lies outside its data folder `root`, itself or through a
/// symbolic link: a data set names its own files, and one that reaches elsewhere on the
/// machine is a mistake or an attack. A missing file is left to the reader to report.
pub fn check_inside(root: &Path, file: &Path) -> Result<()> {
    let (Ok(root_real), Ok(real)) = (root.canonicalize(), file.canonicalize()) else {
        return Ok(());
    };
    if !real.starts_with(&root_real) {
        bail!(
            "{} leaves the data folder {} (it resolves to {})",
            file.display(),
            root.display(),
            real.display()
        );
    }
    Ok(())
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

/// A PNG whose header claims `w x h` pixels (RGB, or palette indices), with one tiny data
/// chunk: what a decompression bomb or a damaged header looks like to a decoder.
#[cfg(test)]
pub(crate) fn claimed_png(w: u32, h: u32, indexed: bool) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.finalize().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, if indexed { 3 } else { 2 }, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    if indexed {
        chunk(&mut out, b"PLTE", &[0, 0, 0, 255, 255, 255]);
    }
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn hostile_images_load_or_fail_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(16, 10, |x, y| {
            image::Rgb([(x * 15) as u8, (y * 25) as u8, 90])
        }));
        let png = dir.path().join("a.png");
        save_png(&png, &img).unwrap();
        let jpg = dir.path().join("a.jpg");
        img.save(&jpg).unwrap();
        for path in [png, jpg] {
            let valid = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            crate::faults::mutate::never_panics(&name, &name, &valid, 6, 300, |p: &Path| {
                open(p).map(|i| i.width())
            });
        }
    }
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_data_file_reaching_outside_its_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::write(dir.path().join("secret.png"), b"x").unwrap();
        std::fs::write(root.join("images/a.png"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.png"), root.join("images/b.png"))
            .unwrap();
        std::os::unix::fs::symlink(root.join("images/a.png"), root.join("images/c.png")).unwrap();
        check_inside(&root, &root.join("images/a.png")).unwrap();
        // A link that stays inside the folder is fine.
        check_inside(&root, &root.join("images/c.png")).unwrap();
        let err = check_inside(&root, &root.join("images/b.png")).unwrap_err();
        assert!(
            format!("{err:#}").contains("leaves the data folder"),
            "{err:#}"
        );
        let err = check_inside(&root, &root.join("../secret.png")).unwrap_err();
        assert!(format!("{err:#}").contains("secret.png"), "{err:#}");
    }

    #[test]
    fn an_image_claiming_an_absurd_size_is_refused_before_its_pixels_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let bomb = dir.path().join("bomb.png");
        std::fs::write(&bomb, claimed_png(100_000, 100_000, false)).unwrap();
        let err = format!("{:#}", open(&bomb).unwrap_err());
        assert!(
            err.contains("bomb.png") && err.contains("100000 x 100000"),
            "{err}"
        );
        assert!(err.contains(crate::limits::IMAGE_SIDE.var), "{err}");
        // A size within the cap gets to the decoder, which finds the data short: an error too,
        // not a panic or an allocation of the claimed size.
        let short = dir.path().join("short.png");
        std::fs::write(&short, claimed_png(30, 20, false)).unwrap();
        let err = format!("{:#}", open(&short).unwrap_err());
        assert!(err.contains("short.png"), "{err}");
    }

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
