//! Rebuilding Hugging Face `Dinov2Model` weights from a DINOv2 backbone exported to ONNX.
//!
//! Only the few protobuf fields needed are declared (prost skips the rest). In the export, named
//! initializers carry the HF parameter names behind a `backbone.` prefix, but the Linear
//! weights were folded into anonymous `onnx::MatMul_*` initializers stored `[in, out]`; the
//! name of the MatMul node that consumes each one (`/backbone/encoder/layer.0/mlp/fc1/MatMul`)
//! says which layer and role it has. The position embedding was split into its CLS part and its
//! patch-grid part, which are joined again here.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use prost::Message;
use safetensors::tensor::{Dtype, TensorView};

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

const ONNX_FLOAT: i32 = 1;

/// A float tensor in row-major order.
#[derive(Clone, Debug)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Array {
    fn from_proto(t: &TensorProto) -> Result<Self> {
        if t.data_type != ONNX_FLOAT {
            bail!(
                "initializer `{}` has ONNX type {}, expected float",
                t.name,
                t.data_type
            );
        }
        if t.data_location != 0 {
            bail!("initializer `{}` is stored outside the model file", t.name);
        }
        let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let n: usize = shape.iter().product();
        let data = if !t.raw_data.is_empty() {
            if t.raw_data.len() != 4 * n {
                bail!(
                    "initializer `{}`: {} bytes for {n} floats",
                    t.name,
                    t.raw_data.len()
                );
            }
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            t.float_data.clone()
        };
        if data.len() != n {
            bail!(
                "initializer `{}`: {} values for shape {shape:?}",
                t.name,
                data.len()
            );
        }
        Ok(Self { shape, data })
    }

    /// The transpose of a matrix.
    fn t(&self) -> Result<Self> {
        let [r, c] = self.shape[..] else {
            bail!("transposing a tensor of shape {:?}", self.shape)
        };
        let mut data = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        Ok(Self {
            shape: vec![c, r],
            data,
        })
    }
}

/// Converted weights and the `config.json` that describes them.
pub struct Converted {
    pub config: serde_json::Value,
    pub safetensors: Vec<u8>,
    pub tensors: BTreeMap<String, Array>,
}

/// Named parameters of the `backbone.` part of an exported DINOv2 graph, in HF naming, plus
/// the initializers named in `extra` under their graph names.
pub fn backbone_tensors(onnx: &[u8], extra: &[&str]) -> Result<BTreeMap<String, Array>> {
    let model = ModelProto::decode(onnx).context("decoding the ONNX protobuf")?;
    let graph = model.graph.context("the ONNX model has no graph")?;
    let inits: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut out = BTreeMap::new();
    for t in &graph.initializer {
        if let Some(name) = t.name.strip_prefix("backbone.") {
            out.insert(name.to_string(), Array::from_proto(t)?);
        } else if extra.contains(&t.name.as_str()) {
            out.insert(t.name.clone(), Array::from_proto(t)?);
        }
    }
    for node in &graph.node {
        if node.op_type != "MatMul" {
            continue;
        }
        let Some(path) = node
            .name
            .strip_prefix("/backbone/")
            .and_then(|p| p.strip_suffix("/MatMul"))
        else {
            continue;
        };
        let Some(weight) = node.input.iter().find_map(|i| inits.get(i.as_str())) else {
            continue;
        };
        let name = format!("{}.weight", path.replace('/', "."));
        let w = Array::from_proto(weight).with_context(|| format!("MatMul node {}", node.name))?;
        if out.insert(name.clone(), w.t()?).is_some() {
            bail!("two sources for `{name}`");
        }
    }
    Ok(out)
}

/// Settings that an ONNX graph does not state as tensors.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dinov2Settings {
    pub num_attention_heads: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    /// Name of the patch-grid part of the split position embedding.
    pub position_grid: String,
    /// Name of the CLS part of the split position embedding.
    pub position_cls: String,
}

/// Rebuilds an HF `Dinov2Model` checkpoint from an exported graph.
pub fn dinov2_from_onnx(onnx: &[u8], settings: &Dinov2Settings) -> Result<Converted> {
    let mut tensors = backbone_tensors(onnx, &[&settings.position_cls, &settings.position_grid])?;
    let mut take = |n: &str| {
        tensors
            .remove(n)
            .with_context(|| format!("the graph has no `{n}`"))
    };
    let cls_pos = take(&settings.position_cls)?;
    let grid_pos = take(&settings.position_grid)?;
    let d = *cls_pos.shape.last().context("empty position embedding")?;
    if cls_pos.shape != [1, 1, d] || grid_pos.shape.len() != 3 || grid_pos.shape[2] != d {
        bail!(
            "position embedding parts have shapes {:?} and {:?}",
            cls_pos.shape,
            grid_pos.shape
        );
    }
    let n = grid_pos.shape[1];
    let side = (n as f64).sqrt().round() as usize;
    if side * side != n {
        bail!("the position grid has {n} entries, not a square");
    }
    let mut pos = cls_pos.data.clone();
    pos.extend_from_slice(&grid_pos.data);
    tensors.insert(
        "embeddings.position_embeddings".into(),
        Array {
            shape: vec![1, 1 + n, d],
            data: pos,
        },
    );

    let layers = (0..)
        .take_while(|i| tensors.contains_key(&format!("encoder.layer.{i}.norm1.weight")))
        .count();
    if layers == 0 {
        bail!("no encoder layers found under backbone.encoder.layer.N");
    }
    let fc1 = tensors
        .get("encoder.layer.0.mlp.fc1.weight")
        .context("no encoder.layer.0.mlp.fc1 weight")?;
    let mlp = fc1.shape[0];
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.cls_token".into(), vec![1, 1, d]),
        ("embeddings.position_embeddings".into(), vec![1, 1 + n, d]),
        (
            "embeddings.patch_embeddings.projection.weight".into(),
            vec![d, 3, settings.patch_size, settings.patch_size],
        ),
        (
            "embeddings.patch_embeddings.projection.bias".into(),
            vec![d],
        ),
        ("layernorm.weight".into(), vec![d]),
        ("layernorm.bias".into(), vec![d]),
    ];
    for i in 0..layers {
        let p = format!("encoder.layer.{i}");
        for (name, shape) in [
            ("norm1.weight", vec![d]),
            ("norm1.bias", vec![d]),
            ("norm2.weight", vec![d]),
            ("norm2.bias", vec![d]),
            ("layer_scale1.lambda1", vec![d]),
            ("layer_scale2.lambda1", vec![d]),
            ("attention.attention.query.weight", vec![d, d]),
            ("attention.attention.query.bias", vec![d]),
            ("attention.attention.key.weight", vec![d, d]),
            ("attention.attention.key.bias", vec![d]),
            ("attention.attention.value.weight", vec![d, d]),
            ("attention.attention.value.bias", vec![d]),
            ("attention.output.dense.weight", vec![d, d]),
            ("attention.output.dense.bias", vec![d]),
            ("mlp.fc1.weight", vec![mlp, d]),
            ("mlp.fc1.bias", vec![mlp]),
            ("mlp.fc2.weight", vec![d, mlp]),
            ("mlp.fc2.bias", vec![d]),
        ] {
            expected.push((format!("{p}.{name}"), shape));
        }
    }
    let mut kept = BTreeMap::new();
    for (name, shape) in &expected {
        let t = tensors
            .remove(name)
            .with_context(|| format!("the graph has no `backbone.{name}`"))?;
        if &t.shape != shape {
            bail!("`{name}` has shape {:?}, expected {shape:?}", t.shape);
        }
        kept.insert(name.clone(), t);
    }
    let config = serde_json::json!({
        "model_type": "dinov2",
        "architectures": ["Dinov2Model"],
        "hidden_size": d,
        "num_hidden_layers": layers,
        "num_attention_heads": settings.num_attention_heads,
        "mlp_ratio": mlp as f64 / d as f64,
        "image_size": side * settings.patch_size,
        "patch_size": settings.patch_size,
        "num_channels": 3,
        "layer_norm_eps": settings.layer_norm_eps,
        "layerscale_value": 1.0,
        "qkv_bias": true,
        "hidden_act": "gelu",
        "use_swiglu_ffn": false,
        "torch_dtype": "float32",
    });
    let views: Vec<(String, TensorView<'_>)> = kept
        .iter()
        .map(|(name, a)| {
            let bytes: &[u8] = bytemuck::cast_slice(&a.data);
            Ok((
                name.clone(),
                TensorView::new(Dtype::F32, a.shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<_>>()?;
    let safetensors = safetensors::serialize(views, None)?;
    Ok(Converted {
        config,
        safetensors,
        tensors: kept,
    })
}
