//! Manifests, checksum verification, the cache's all-or-nothing fetch, and the ONNX converter
//! on a synthetic export shaped like the real one.

use std::io::Write;
use std::path::Path;

use downstream_hub::manifest::{self, Convert, Manifest, Source};
use downstream_hub::onnx::{self, Dinov2Settings, GraphProto, ModelProto, NodeProto, TensorProto};
use prost::Message;
use sha2::{Digest, Sha256};

#[test]
fn built_in_manifests_parse_and_have_unique_names() {
    let all = manifest::all().unwrap();
    assert!(all.len() >= 2);
    let mut names: Vec<_> = all.iter().map(|m| m.name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all.len());
    assert!(manifest::find("dinov2-s14").is_ok());
    assert_eq!(
        manifest::find_dataset("deepforest").unwrap().family,
        "detection"
    );
    let err = manifest::find("no-such-model").unwrap_err().to_string();
    assert!(
        err.contains("minilm-l6") && err.contains("dinov2-s14"),
        "{err}"
    );
}

#[test]
fn manifest_with_a_bad_checksum_is_rejected() {
    let text = r#"
name = "x"
family = "bert"
summary = "s"
licence = "MIT"
[source]
package = "p"
version = "1"
wheel = "p-1-py3-none-any.whl"
sha256 = "abc"
bytes = 1
[convert]
kind = "copy"
from = "p/"
files = ["config.json"]
"#;
    let err = format!("{:#}", manifest::parse(text).unwrap_err());
    assert!(err.contains("sha256"), "{err}");
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A wheel (zip) holding `pkg/model/config.json` and `pkg/model/model.safetensors`.
fn fake_wheel(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    zip.start_file("pkg/model/config.json", opts).unwrap();
    zip.write_all(b"{\"model_type\": \"bert\"}").unwrap();
    zip.start_file("pkg/model/model.safetensors", opts).unwrap();
    zip.write_all(b"weights").unwrap();
    zip.finish().unwrap();
    std::fs::read(&path).unwrap()
}

fn copy_manifest(sha256: String) -> Manifest {
    Manifest {
        name: "fake".into(),
        family: "bert".into(),
        summary: "a test model".into(),
        licence: "MIT".into(),
        sources: vec![Source {
            package: "fake".into(),
            version: "1.0".into(),
            client: downstream_hub::manifest::Client::Pip,
            file: Some("fake-1.0-py3-none-any.whl".into()),
            sha256: Some(sha256),
            bytes: 0,
        }],
        convert: Convert::Copy {
            from: "pkg/model/".into(),
            files: vec!["config.json".into(), "model.safetensors".into()],
        },
    }
}

#[test]
fn a_wheel_with_the_wrong_checksum_leaves_nothing_behind() {
    let wheels = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    fake_wheel(wheels.path(), "fake-1.0-py3-none-any.whl");
    let m = copy_manifest("0".repeat(64));
    let err = format!(
        "{:#}",
        downstream_hub::cache::ensure_from(&m, root.path(), Some(wheels.path())).unwrap_err()
    );
    assert!(
        err.contains("SHA-256") && err.contains("fake-1.0-py3-none-any.whl"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_verified_wheel_is_unpacked_once_into_the_cache() {
    let wheels = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let bytes = fake_wheel(wheels.path(), "fake-1.0-py3-none-any.whl");
    let m = copy_manifest(hex(&bytes));
    let dir = downstream_hub::cache::ensure_from(&m, root.path(), Some(wheels.path())).unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        b"weights"
    );
    assert!(dir.join(".complete").is_file());
    // A second call must not need the wheel any more.
    std::fs::remove_dir_all(wheels.path()).unwrap();
    let again = downstream_hub::cache::ensure_from(&m, root.path(), Some(wheels.path())).unwrap();
    assert_eq!(again, dir);
}

/// A Debian package (built with `dpkg-deb`) holding `usr/share/fake/{a.txt,b.bin}`.
fn fake_deb(dir: &Path, name: &str) -> Vec<u8> {
    deb_with(
        dir,
        name,
        "fake-data",
        &[
            ("usr/share/fake/a.txt", b"raw data"),
            ("usr/share/fake/b.bin", &[1, 2, 3]),
        ],
    )
}

/// A Debian package `package` holding `files` (path, bytes).
fn deb_with(dir: &Path, name: &str, package: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let tree = tempfile::tempdir().unwrap();
    for (path, bytes) in files {
        let path = tree.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    std::fs::create_dir_all(tree.path().join("DEBIAN")).unwrap();
    std::fs::write(
        tree.path().join("DEBIAN/control"),
        format!("Package: {package}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: nobody <n@example.org>\nDescription: test data\n"),
    )
    .unwrap();
    let path = dir.join(name);
    let status = std::process::Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(tree.path())
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("dpkg-deb runs");
    assert!(status.success());
    std::fs::read(&path).unwrap()
}

#[test]
fn a_verified_debian_package_is_unpacked_and_its_files_copied() {
    let packages = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let bytes = fake_deb(packages.path(), "fake-data_1.0-1_all.deb");
    let m = Manifest {
        name: "fake-data".into(),
        family: "segmentation".into(),
        summary: "a test data set".into(),
        licence: "MIT".into(),
        sources: vec![Source {
            client: downstream_hub::manifest::Client::Apt,
            package: "fake-data".into(),
            version: "1.0-1".into(),
            file: Some("fake-data_1.0-1_all.deb".into()),
            sha256: Some(hex(&bytes)),
            bytes: bytes.len() as u64,
        }],
        convert: Convert::Copy {
            from: "usr/share/fake/".into(),
            files: vec!["a.txt".into(), "b.bin".into()],
        },
    };
    let dir = downstream_hub::cache::ensure_from(&m, root.path(), Some(packages.path())).unwrap();
    assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"raw data");
    assert_eq!(std::fs::read(dir.join("b.bin")).unwrap(), [1, 2, 3]);
    // Only the converted folder and the lock remain: the unpacked package is gone.
    let mut left: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, [".fake-data.lock", "fake-data"]);
}

/// Two packages unpacked into one tree; folders copied whole and checked by their digest, a
/// wrong digest refused with nothing left behind.
#[test]
fn several_debian_packages_become_one_tree_checked_by_its_digest() {
    let packages = tempfile::tempdir().unwrap();
    let one = deb_with(
        packages.path(),
        "help-en_1.0-1_all.deb",
        "help-en",
        &[
            ("usr/share/help/en/text/a/p1.html", b"<p id=x>One</p>"),
            ("usr/share/help/en/text/p2.html", b"Two"),
        ],
    );
    let two = deb_with(
        packages.path(),
        "help-de_1.0-1_all.deb",
        "help-de",
        &[
            ("usr/share/help/de/text/p2.html", b"Zwei"),
            ("usr/share/help/de/media/x.png", b"png"),
        ],
    );
    let source = |name: &str, bytes: &[u8]| Source {
        client: downstream_hub::manifest::Client::Apt,
        package: name.into(),
        version: "1.0-1".into(),
        file: Some(format!("{name}_1.0-1_all.deb")),
        sha256: Some(hex(bytes)),
        bytes: bytes.len() as u64,
    };
    let manifest = |sha256: String| Manifest {
        name: "help".into(),
        family: "translation".into(),
        summary: "two languages".into(),
        licence: "MIT".into(),
        sources: vec![source("help-en", &one), source("help-de", &two)],
        convert: Convert::CopyTree {
            root: "usr/share/help/".into(),
            trees: vec!["en/text".into(), "de/text".into()],
            sha256,
        },
    };
    // The digest of exactly the copied files (media/ is not copied).
    let expected = tempfile::tempdir().unwrap();
    for (path, bytes) in [
        ("en/text/a/p1.html", &b"<p id=x>One</p>"[..]),
        ("en/text/p2.html", b"Two"),
        ("de/text/p2.html", b"Zwei"),
    ] {
        let p = expected.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let digest = downstream_hub::cache::tree_digest(expected.path()).unwrap();

    let root = tempfile::tempdir().unwrap();
    let err = format!(
        "{:#}",
        downstream_hub::cache::ensure_from(
            &manifest("1".repeat(64)),
            root.path(),
            Some(packages.path())
        )
        .unwrap_err()
    );
    assert!(err.contains("digest"), "{err}");
    assert!(!root.path().join("help").exists());

    let dir =
        downstream_hub::cache::ensure_from(&manifest(digest), root.path(), Some(packages.path()))
            .unwrap();
    assert_eq!(
        std::fs::read(dir.join("en/text/a/p1.html")).unwrap(),
        b"<p id=x>One</p>"
    );
    assert_eq!(std::fs::read(dir.join("de/text/p2.html")).unwrap(), b"Zwei");
    assert!(!dir.join("de/media").exists());
}

#[test]
fn a_drifting_version_needs_a_digest_of_its_contents() {
    let text = |convert: &str| {
        format!(
            "name = \"x\"\nfamily = \"translation\"\nsummary = \"s\"\nlicence = \"MIT\"\n\
             [source]\nclient = \"apt\"\npackage = \"p\"\nversion = \"1.0-1+deb12u*\"\nbytes = 1\n\
             [convert]\n{convert}"
        )
    };
    let err =
        downstream_hub::manifest::parse(&text("kind = \"copy\"\nfrom = \"a/\"\nfiles = [\"b\"]"))
            .unwrap_err()
            .to_string();
    assert!(err.contains("digest"), "{err}");
    let ok = downstream_hub::manifest::parse(&text(&format!(
        "kind = \"copy-tree\"\nroot = \"a/\"\ntrees = [\"b\"]\nsha256 = \"{}\"",
        "0".repeat(64)
    )))
    .unwrap();
    assert_eq!(ok.sources[0].drifting(), Some("1.0-1+deb12u"));
}

fn init(name: &str, dims: &[usize], f: impl Fn(usize) -> f32) -> TensorProto {
    let n: usize = dims.iter().product();
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: 1,
        float_data: vec![],
        name: name.into(),
        raw_data: (0..n).flat_map(|i| f(i).to_le_bytes()).collect(),
        data_location: 0,
    }
}

/// A one-layer export: hidden 4, MLP 8, patch 2, 2x2 position grid.
fn synthetic_export() -> Vec<u8> {
    let (d, m, p) = (4usize, 8usize, 2usize);
    let mut inits = vec![
        init("backbone.embeddings.cls_token", &[1, 1, d], |i| i as f32),
        init(
            "backbone.embeddings.patch_embeddings.projection.weight",
            &[d, 3, p, p],
            |i| i as f32,
        ),
        init(
            "backbone.embeddings.patch_embeddings.projection.bias",
            &[d],
            |i| i as f32,
        ),
        init("backbone.layernorm.weight", &[d], |_| 1.0),
        init("backbone.layernorm.bias", &[d], |_| 0.0),
        init("onnx::Concat_1", &[1, 1, d], |i| 100.0 + i as f32),
        init("onnx::Reshape_2", &[1, 4, d], |i| 200.0 + i as f32),
    ];
    let mut nodes = vec![];
    let l = "backbone.encoder.layer.0";
    for n in ["norm1", "norm2"] {
        inits.push(init(&format!("{l}.{n}.weight"), &[d], |_| 1.0));
        inits.push(init(&format!("{l}.{n}.bias"), &[d], |_| 0.0));
    }
    inits.push(init(&format!("{l}.layer_scale1.lambda1"), &[d], |_| 0.5));
    inits.push(init(&format!("{l}.layer_scale2.lambda1"), &[d], |_| 0.5));
    let linears = [
        ("attention/attention/query", d, d),
        ("attention/attention/key", d, d),
        ("attention/attention/value", d, d),
        ("attention/output/dense", d, d),
        ("mlp/fc1", d, m),
        ("mlp/fc2", m, d),
    ];
    for (k, (path, din, dout)) in linears.iter().enumerate() {
        let w = format!("onnx::MatMul_{}", 50 + k);
        // Stored [in, out]: entry (i, o) holds 10*i + o + 1000*k.
        let dout = *dout;
        inits.push(init(&w, &[*din, dout], move |j| {
            (10 * (j / dout) + j % dout + 1000 * k) as f32
        }));
        inits.push(init(
            &format!("{l}.{}.bias", path.replace('/', ".")),
            &[dout],
            |i| i as f32,
        ));
        nodes.push(NodeProto {
            input: vec![format!("/x{k}"), w],
            output: vec![format!("/y{k}")],
            name: format!("/backbone/encoder/layer.0/{path}/MatMul"),
            op_type: "MatMul".into(),
        });
    }
    // The decoder's weights must not leak into the backbone.
    inits.push(init("decoder.final_conv.weight", &[1, 4, 1, 1], |_| 0.0));
    ModelProto {
        graph: Some(GraphProto {
            node: nodes,
            initializer: inits,
        }),
    }
    .encode_to_vec()
}

/// How the synthetic export is read.
fn tiny_settings() -> Dinov2Settings {
    Dinov2Settings {
        num_attention_heads: 2,
        patch_size: 2,
        layer_norm_eps: 1e-6,
        position_cls: "onnx::Concat_1".into(),
        position_grid: "onnx::Reshape_2".into(),
    }
}

#[test]
fn onnx_export_becomes_hf_dinov2_weights() {
    let settings = tiny_settings();
    let c = onnx::dinov2_from_onnx(&synthetic_export(), &settings).unwrap();
    assert_eq!(c.config["hidden_size"], 4);
    assert_eq!(c.config["num_hidden_layers"], 1);
    assert_eq!(c.config["image_size"], 4);
    assert_eq!(c.config["mlp_ratio"], 2.0);
    assert_eq!(c.tensors.len(), 6 + 18);
    assert!(c
        .tensors
        .keys()
        .all(|k| !k.starts_with("decoder") && !k.starts_with("onnx")));
    // fc1: HF [out=8, in=4]; entry (o, i) is the export's (i, o) = 10*i + o + 4000.
    let fc1 = &c.tensors["encoder.layer.0.mlp.fc1.weight"];
    assert_eq!(fc1.shape, vec![8, 4]);
    assert_eq!(fc1.data[3 * 4 + 2], (10 * 2 + 3 + 4000) as f32);
    let pos = &c.tensors["embeddings.position_embeddings"];
    assert_eq!(pos.shape, vec![1, 5, 4]);
    assert_eq!(&pos.data[..5], &[100.0, 101.0, 102.0, 103.0, 200.0]);
    // And the safetensors bytes hold the same.
    let st = safetensors::SafeTensors::deserialize(&c.safetensors).unwrap();
    assert_eq!(
        st.tensor("encoder.layer.0.mlp.fc1.weight").unwrap().shape(),
        &[8, 4]
    );
}

#[test]
fn onnx_export_without_the_named_position_parts_is_an_error() {
    let settings = Dinov2Settings {
        position_cls: "onnx::Missing".into(),
        ..tiny_settings()
    };
    let err = format!(
        "{:#}",
        onnx::dinov2_from_onnx(&synthetic_export(), &settings)
            .err()
            .unwrap()
    );
    assert!(err.contains("onnx::Missing"), "{err}");
}

#[test]
fn hostile_onnx_files_convert_or_fail_never_panic() {
    let valid = synthetic_export();
    let settings = tiny_settings();
    let converted = downstream_core::faults::mutate::never_panics(
        "onnx",
        "model.onnx",
        &valid,
        9,
        300,
        |p: &Path| -> anyhow::Result<usize> {
            let bytes = std::fs::read(p)?;
            onnx::backbone_tensors(&bytes, &[])?;
            Ok(onnx::dinov2_from_onnx(&bytes, &settings)?.tensors.len())
        },
    );
    assert!(
        converted < 300,
        "every mutant converted: the reader checks nothing"
    );
}
