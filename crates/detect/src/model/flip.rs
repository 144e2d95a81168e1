//! Test-time views of a square input: the mirrors, and for images without an "up" (aerial,
//! microscopy) the transposes and quarter turns, the eight symmetries of a square with the
//! input itself. Each is a transpose or not followed by mirrors, so that one rule undoes any
//! of them for a box found on the view.

use candle_core::Tensor;

/// A flip of the square model input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flip {
    /// Left to right.
    Horizontal,
    /// Upside down.
    Vertical,
    /// Both: a half turn.
    Both,
    /// About the diagonal from the top-left corner: rows become columns.
    Transpose,
    /// Transposed, then left to right: a quarter turn clockwise.
    Clockwise,
    /// Transposed, then upside down: a quarter turn anticlockwise.
    Anticlockwise,
    /// Transposed, then both: about the other diagonal.
    AntiTranspose,
}

impl Flip {
    /// (transposed first, mirrored left to right, mirrored upside down)
    fn parts(self) -> (bool, bool, bool) {
        match self {
            Flip::Horizontal => (false, true, false),
            Flip::Vertical => (false, false, true),
            Flip::Both => (false, true, true),
            Flip::Transpose => (true, false, false),
            Flip::Clockwise => (true, true, false),
            Flip::Anticlockwise => (true, false, true),
            Flip::AntiTranspose => (true, true, true),
        }
    }

    /// The flipped copy of a batch of square images `(B, C, S, S)`.
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (t, h, v) = self.parts();
        let mut x = if t {
            x.transpose(2, 3)?.contiguous()?
        } else {
            x.clone()
        };
        for (on, dim) in [(h, 3), (v, 2)] {
            if on {
                let n = x.dim(dim)?;
                let rev: Vec<u32> = (0..n as u32).rev().collect();
                x = x.index_select(&Tensor::new(rev.as_slice(), x.device())?, dim)?;
            }
        }
        Ok(x)
    }

    /// A box found on the flipped input of side `size`, in the unflipped input's pixels.
    pub fn undo(self, [x0, y0, x1, y1]: [f32; 4], size: f32) -> [f32; 4] {
        let (t, h, v) = self.parts();
        let (x0, x1) = if h { (size - x1, size - x0) } else { (x0, x1) };
        let (y0, y1) = if v { (size - y1, size - y0) } else { (y0, y1) };
        if t {
            [y0, x0, y1, x1]
        } else {
            [x0, y0, x1, y1]
        }
    }
}

impl std::str::FromStr for Flip {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "horizontal" | "h" => Ok(Flip::Horizontal),
            "vertical" | "v" => Ok(Flip::Vertical),
            "both" | "hv" => Ok(Flip::Both),
            "transpose" | "t" => Ok(Flip::Transpose),
            "clockwise" | "th" => Ok(Flip::Clockwise),
            "anticlockwise" | "tv" => Ok(Flip::Anticlockwise),
            "antitranspose" | "thv" => Ok(Flip::AntiTranspose),
            _ => Err(format!(
                "unknown flip `{s}`: horizontal (h), vertical (v), both (hv), transpose (t), \
                 clockwise (th), anticlockwise (tv) or antitranspose (thv)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Result;
    use candle_core::Device;

    #[test]
    fn a_flip_undone_returns_a_box_to_where_the_unflipped_image_has_it() -> Result<()> {
        // A 4x4 image with one bright pixel at (x 3, y 1) and its box [3, 1, 4, 2].
        let mut px = vec![0f32; 16];
        px[4 + 3] = 1.0;
        let x = Tensor::from_vec(px, (1, 1, 4, 4), &Device::Cpu)?;
        let all = [
            (Flip::Horizontal, (0, 1)),
            (Flip::Vertical, (3, 2)),
            (Flip::Both, (0, 2)),
            (Flip::Transpose, (1, 3)),
            (Flip::Clockwise, (2, 3)),
            (Flip::Anticlockwise, (1, 0)),
            (Flip::AntiTranspose, (2, 0)),
        ];
        for (flip, moved_to) in all {
            let flipped = flip.apply(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let at = flipped.iter().position(|&v| v == 1.0).unwrap();
            assert_eq!((at % 4, at / 4), moved_to, "{flip:?}");
            let (fx, fy) = ((at % 4) as f32, (at / 4) as f32);
            // Where the flipped image has the pixel, undone, is where the original has it.
            assert_eq!(
                flip.undo([fx, fy, fx + 1.0, fy + 1.0], 4.0),
                [3.0, 1.0, 4.0, 2.0],
                "{flip:?}"
            );
        }
        assert_eq!("hv".parse::<Flip>(), Ok(Flip::Both));
        assert_eq!("th".parse::<Flip>(), Ok(Flip::Clockwise));
        assert!("diagonal".parse::<Flip>().is_err());
        Ok(())
    }
}
