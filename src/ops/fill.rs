//! `fill.wgsl`: set every element of a tensor to a constant.

use anyhow::Result;

use crate::gpu::{Dispatch, GpuContext, GpuTensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    value: f32,
}

/// Record `out[i] = value` for every element.
pub fn fill(ctx: &GpuContext, out: &GpuTensor, value: f32) -> Result<Dispatch> {
    let k = ctx.kernel("fill")?;
    Ok(ctx.dispatch(&k, &Params { count: out.len as u32, value }, &[out], out.len as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_element_including_a_partial_workgroup() {
        let ctx = GpuContext::new_default().unwrap();
        let t = ctx.upload(&vec![0f32; 131]);
        ctx.run(&[fill(&ctx, &t, 2.5).unwrap()]).unwrap();
        assert_eq!(ctx.read_f32(&t).unwrap(), vec![2.5; 131]);
    }
}
