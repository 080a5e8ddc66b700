//! Every WGSL kernel parses, validates and translates with naga to SPIR-V (Vulkan),
//! MSL (Metal) and HLSL (DX12): the kernels are known to compile for every backend
//! the project claims, with no device needed.

use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use spark_wgpu::gpu::SHADERS;

#[test]
fn every_shader_file_is_embedded() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let on_disk = std::fs::read_dir(dir).unwrap().filter(|e| {
        e.as_ref().unwrap().path().extension().is_some_and(|x| x == "wgsl")
    });
    assert_eq!(on_disk.count(), SHADERS.len());
    assert!(!SHADERS.is_empty());
}

#[test]
fn every_shader_translates_to_spirv_msl_and_hlsl() {
    let mut failures = vec![];
    for (name, src) in SHADERS {
        let res = (|| -> Result<(), String> {
            let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
            // Portable path only: no optional capability is assumed.
            let info = Validator::new(ValidationFlags::all(), Capabilities::empty())
                .validate(&module)
                .map_err(|e| format!("validation: {e:?}"))?;
            spv::write_vec(&module, &info, &spv::Options::default(), None).map_err(|e| format!("SPIR-V: {e}"))?;
            let mut s = String::new();
            let pipeline = msl::PipelineOptions::default();
            msl::write_string(&module, &info, &msl::Options::default(), &pipeline).map_err(|e| format!("MSL: {e}"))?;
            let opts = hlsl::Options::default();
            let hlsl_pipeline = hlsl::PipelineOptions::default();
            let mut w = hlsl::Writer::new(&mut s, &opts, &hlsl_pipeline);
            w.write(&module, &info, None).map_err(|e| format!("HLSL: {e}"))?;
            Ok(())
        })();
        if let Err(e) = res {
            failures.push(format!("shaders/{name}.wgsl: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
