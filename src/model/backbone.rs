//! Backbones: the sparse encoder SparK pre-trains, as a trait, so that an encoder defined
//! outside the crate trains and exports like the built-in ResNets and ConvNeXts (see
//! `docs/backbone.md` and `examples/custom_backbone.rs`).

use anyhow::Result;

use crate::graph::{Graph, ParamRegistry, Var};

/// An encoder architecture: declares its parameters, then records its forward.
///
/// Contract (checked by [`crate::model::SparkBuilder::build`]):
/// - every parameter is named under [`crate::io::names::ENCODER_PREFIX`]
///   (`sparse_encoder.sp_cnn.`), so checkpoints and `export` see it as the encoder;
/// - [`Backbone::declare`] names each parameter's initialisation ([`crate::graph::Init`]);
/// - the forward returns one feature map per entry of [`Backbone::feature_widths`], with
///   that many channels, at strides 4, 8, 16 and 32 of the input (fewer maps: the
///   smallest strides are left out, as SparK's decoder only needs the stride-32 one).
pub trait Backbone {
    /// A short name, recorded in the configuration (e.g. `"vgg_tiny"`).
    fn name(&self) -> String;

    /// The channels of the feature maps the forward returns, largest map first.
    fn feature_widths(&self) -> Vec<usize>;

    /// Declare the parameters in `reg` (spreading the network's stochastic depth rate
    /// `drop_path_rate` over its blocks, if it has any) and return the declared encoder.
    fn declare(&self, reg: &mut ParamRegistry, drop_path_rate: f64) -> Result<Box<dyn DeclaredBackbone>>;
}

/// A declared encoder: records its forward into a graph.
pub trait DeclaredBackbone {
    /// Record the forward of the visible pixels `pixels` (the sparse set of the
    /// `input_size`² input, 3 channels) and return the feature maps (see [`Backbone`]).
    /// Create the sparse sets of each stage with `g.set(h, w, true)`.
    fn forward(&self, g: &mut Graph, pixels: Var, input_size: usize) -> Result<Vec<Var>>;
}
