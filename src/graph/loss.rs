//! The loss node: SparK's masked-patch loss of a reconstruction against the unmasked
//! image, whose kernel writes the gradient of the reconstruction in the same pass (the
//! loss is the graph's one scalar output, so its gradient needs no backward op). The node
//! seeds that gradient itself: [`Graph::build_backward`] starts from it.

use anyhow::{Result, ensure};

use super::{Graph, Var};
use crate::gpu::GpuTensor;
use crate::ops::loss::{LossTensors, masked_patch_loss_chunked};

/// The loss node's output tensors.
#[derive(Clone, Debug)]
pub struct LossOutputs {
    /// The mean loss over the masked patches, `[1]`.
    pub loss: GpuTensor,
    /// The loss of every patch `[B, fh, fw]` (0 at visible patches).
    pub per_patch: GpuTensor,
}

impl Graph<'_> {
    /// Record the masked-patch loss of `rec` (`[B, H, W, 3]` on a dense set) against
    /// `target` (the unmasked image, same layout) under the step's mask, over `patch`×`patch`
    /// patches. Call once, after the forward; a training graph's backward starts here.
    pub fn masked_patch_loss(&mut self, rec: Var, target: &GpuTensor, patch: usize) -> Result<LossOutputs> {
        ensure!(self.loss.is_none(), "the graph already has a loss");
        let rec_set = self.set_of(rec);
        let (h, w) = (self.stage(rec_set).h, self.stage(rec_set).w);
        ensure!(
            !self.stage(rec_set).sparse && self.channels(rec) == 3,
            "the loss needs a dense 3-channel reconstruction"
        );
        let out = LossOutputs { loss: self.ctx.zeros(1), per_patch: self.ctx.zeros(self.batch * self.fh * self.fw) };
        // The gradient of the reconstruction, written by the loss kernel in the forward.
        let d_rec = self.ctx.zeros(self.batch * h * w * 3);
        let rec_t = self.tensor(rec).clone();
        let ch = self.chunks_for(&[(rec_set, 3)]);
        let views: Vec<_> = ch
            .ranges()
            .map(|r| (self.view(target, rec_set, 3, &r), self.view(&rec_t, rec_set, 3, &r), self.view(&d_rec, rec_set, 3, &r)))
            .collect();
        let t = LossTensors { visible: &self.mask, loss: &out.loss, per_patch: &out.per_patch };
        let d = masked_patch_loss_chunked(self.ctx, &views, &t, self.batch, h, w, patch)?;
        self.forward.extend(d);
        if self.train {
            let info = &mut self.vars[rec.0];
            info.grad = Some(d_rec);
            info.grad_written = true;
        }
        self.loss = Some(out.clone());
        Ok(out)
    }

    /// The loss node's outputs (None before [`Graph::masked_patch_loss`]).
    pub fn loss(&self) -> Option<&LossOutputs> {
        self.loss.as_ref()
    }
}
