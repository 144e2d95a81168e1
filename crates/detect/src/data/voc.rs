//! Pascal VOC XML: one file per image (`<filename>`, `<size>`, `<object>` with `<name>`,
//! `<difficult>` and `<bndbox>`).
//!
//! Boxes are read as `x = xmin, w = xmax - xmin` (pixel edges), the convention of the tools
//! that write these files for aerial imagery (DeepForest); `difficult` objects become crowd
//! regions, which COCO evaluation neither requires nor penalises, as VOC's own metric does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{check_relative, Annotation, Category, DetectionSet, ImageRecord};

/// One parsed XML file.
struct VocImage {
    file_name: String,
    width: u32,
    height: u32,
    objects: Vec<(String, [f64; 4], bool)>,
}

fn child<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<roxmltree::Node<'a, 'a>> {
    node.children().find(|c| c.has_tag_name(name))
}

fn text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    child(node, name).and_then(|c| c.text()).map(str::trim)
}

fn number(node: roxmltree::Node, name: &str, path: &Path) -> Result<f64> {
    let raw = text(node, name).with_context(|| format!("{}: missing <{name}>", path.display()))?;
    raw.parse::<f64>()
        .with_context(|| format!("{}: <{name}> is `{raw}`, not a number", path.display()))
}

fn parse(path: &Path) -> Result<VocImage> {
    let xml =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc = roxmltree::Document::parse(&xml)
        .map_err(|e| anyhow::anyhow!("{}: malformed XML: {e}", path.display()))?;
    let root = doc.root_element();
    if !root.has_tag_name("annotation") {
        bail!(
            "{}: the root element is <{}>, not <annotation>",
            path.display(),
            root.tag_name().name()
        );
    }
    let file_name = text(root, "filename")
        .with_context(|| format!("{}: missing <filename>", path.display()))?
        .to_string();
    let (width, height) = match child(root, "size") {
        Some(size) => (
            number(size, "width", path)? as u32,
            number(size, "height", path)? as u32,
        ),
        None => (0, 0),
    };
    let mut objects = Vec::new();
    for (k, obj) in root
        .children()
        .filter(|c| c.has_tag_name("object"))
        .enumerate()
    {
        let name = text(obj, "name")
            .with_context(|| format!("{}: object {k} has no <name>", path.display()))?;
        let b = child(obj, "bndbox")
            .with_context(|| format!("{}: object {k} has no <bndbox>", path.display()))?;
        let (x0, y0) = (number(b, "xmin", path)?, number(b, "ymin", path)?);
        let (x1, y1) = (number(b, "xmax", path)?, number(b, "ymax", path)?);
        let difficult = text(obj, "difficult").is_some_and(|d| d == "1");
        objects.push((name.to_string(), [x0, y0, x1 - x0, y1 - y0], difficult));
    }
    Ok(VocImage {
        file_name,
        width,
        height,
        objects,
    })
}

/// Loads a VOC folder: XML files from `Annotations/` (or the folder itself), images from
/// `JPEGImages/` (or the folder itself). Categories are `classes` in that order, or the
/// object names found, sorted; their ids count from 1. Image ids follow the sorted XML names.
pub fn load(dir: &Path, classes: Option<&[String]>) -> Result<DetectionSet> {
    let ann_dir = if dir.join("Annotations").is_dir() {
        dir.join("Annotations")
    } else {
        dir.to_path_buf()
    };
    let img_dir = if dir.join("JPEGImages").is_dir() {
        dir.join("JPEGImages")
    } else {
        dir.to_path_buf()
    };
    let mut xmls: Vec<PathBuf> = std::fs::read_dir(&ann_dir)
        .with_context(|| format!("reading {}", ann_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("xml")))
        .collect();
    xmls.sort();
    if xmls.is_empty() {
        bail!("{}: no Pascal VOC .xml files", ann_dir.display());
    }
    let parsed: Vec<VocImage> = xmls.iter().map(|p| parse(p)).collect::<Result<_>>()?;
    let names: Vec<String> = match classes {
        Some(c) => c.to_vec(),
        None => parsed
            .iter()
            .flat_map(|v| v.objects.iter().map(|o| o.0.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let categories: Vec<Category> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Category {
            id: i as u64 + 1,
            name: n.clone(),
        })
        .collect();
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    let mut image_sources = std::collections::HashMap::new();
    for (i, (v, xml)) in parsed.into_iter().zip(&xmls).enumerate() {
        check_relative(&v.file_name).with_context(|| xml.display().to_string())?;
        let image_id = i as u64 + 1;
        image_sources.insert(image_id, xml.clone());
        images.push(ImageRecord {
            id: image_id,
            file_name: v.file_name,
            width: v.width,
            height: v.height,
        });
        for (name, bbox, difficult) in v.objects {
            let category_id = match names.iter().position(|n| *n == name) {
                Some(k) => k as u64 + 1,
                None => bail!(
                    "{}: object class `{name}` is not one of {:?}",
                    xml.display(),
                    names
                ),
            };
            annotations.push(Annotation::from_box(
                annotations.len() as u64 + 1,
                image_id,
                category_id,
                bbox,
                difficult,
            ));
        }
    }
    DetectionSet {
        root: img_dir,
        source: ann_dir,
        images,
        annotations,
        categories,
        clipped: 0,
        image_sources,
    }
    .validate(true, true)
}
