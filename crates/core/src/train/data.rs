//! Data sets and the input pipeline: examples are decoded, resized, normalised and
//! augmented in parallel (rayon), one batch ahead of the step that needs it.

use std::sync::mpsc;

use anyhow::Result;
use rayon::prelude::*;

/// An indexable set of examples.
///
/// `view` selects an augmentation deterministically: 0 is the example as it is; any other
/// value seeds the random choices (flip, crop, jitter), so the same view always gives the
/// same input and target. Targets are loaded apart from inputs because, with cached
/// features, later epochs need only the targets.
pub trait Dataset: Sync {
    type Input: Send;
    type Target: Send + Sync;

    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn input(&self, index: usize, view: u64) -> Result<Self::Input>;

    fn target(&self, index: usize, view: u64) -> Result<Self::Target>;

    /// The size of an example (a text's tokens), if examples vary in size: training batches
    /// then group examples of similar size ([`super::rng::epoch_batches`]) and inference
    /// batches run in order of size, so that little of a batch is padding.
    fn length(&self, _index: usize) -> Option<usize> {
        None
    }

    /// How many distinct augmented views may exist when features are cached, counting the
    /// plain view 0: 1 (the default) for data sets without augmentation.
    fn cached_views(&self) -> u64 {
        1
    }
}

/// A fixed selection of another data set's examples, in the order given.
pub struct Subset<'a, D> {
    data: &'a D,
    indices: Vec<usize>,
}

impl<'a, D: Dataset> Subset<'a, D> {
    /// `n` examples spread evenly over `data` (all of them if it has no more): a validation
    /// subset that stays the same for every evaluation and covers the whole set.
    pub fn spread(data: &'a D, n: usize) -> Self {
        Self {
            data,
            indices: super::config::spread(data.len(), n),
        }
    }
}

impl<D: Dataset> Dataset for Subset<'_, D> {
    type Input = D::Input;
    type Target = D::Target;

    fn len(&self) -> usize {
        self.indices.len()
    }

    fn input(&self, index: usize, view: u64) -> Result<Self::Input> {
        self.data.input(self.indices[index], view)
    }

    fn target(&self, index: usize, view: u64) -> Result<Self::Target> {
        self.data.target(self.indices[index], view)
    }

    fn cached_views(&self) -> u64 {
        self.data.cached_views()
    }

    fn length(&self, index: usize) -> Option<usize> {
        self.data.length(self.indices[index])
    }
}

/// One batch, as the pipeline hands it over: which examples, in which view, with their
/// inputs (absent where the caller said it needs none) and targets.
pub struct Loaded<I, T> {
    pub keys: Vec<(usize, u64)>,
    pub inputs: Vec<Option<I>>,
    pub targets: Vec<T>,
}

/// Loads one batch with rayon. `need_input(key)` tells whether the input must be decoded
/// (false when its features are cached).
pub fn load_batch<D: Dataset>(
    data: &D,
    keys: &[(usize, u64)],
    need_input: &(dyn Fn(&(usize, u64)) -> bool + Sync),
) -> Result<Loaded<D::Input, D::Target>> {
    let loaded: Vec<(Option<D::Input>, D::Target)> = keys
        .par_iter()
        .map(|key| {
            let input = if need_input(key) {
                Some(data.input(key.0, key.1)?)
            } else {
                None
            };
            Ok((input, data.target(key.0, key.1)?))
        })
        .collect::<Result<_>>()?;
    let (inputs, targets) = loaded.into_iter().unzip();
    Ok(Loaded {
        keys: keys.to_vec(),
        inputs,
        targets,
    })
}

/// Runs `consume` on each batch of `batches` while the next one is being loaded on another
/// thread. Stops at the first error from either side.
pub fn prefetched<D: Dataset>(
    data: &D,
    batches: Vec<Vec<(usize, u64)>>,
    need_input: &(dyn Fn(&(usize, u64)) -> bool + Sync),
    mut consume: impl FnMut(usize, Loaded<D::Input, D::Target>) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        // One batch in flight ahead of the consumer bounds memory.
        let (tx, rx) = mpsc::sync_channel::<Result<Loaded<D::Input, D::Target>>>(1);
        let producer = scope.spawn(move || {
            for keys in &batches {
                let batch = load_batch(data, keys, need_input);
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    break;
                }
            }
        });
        let mut result = Ok(());
        for (i, batch) in rx.iter().enumerate() {
            if let Err(e) = batch.and_then(|b| consume(i, b)) {
                result = Err(e);
                break;
            }
        }
        // Dropping the receiver unblocks the producer if the consumer stopped early.
        drop(rx);
        producer.join().expect("the data loader thread panicked");
        result
    })
}
