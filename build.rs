//! Embeds every `shaders/*.wgsl` file into the binary, so that the kernels travel with
//! it and the naga test can iterate over all of them without a hand-kept list.
use std::{env, fs, path::Path};

fn main() {
    // Read at run time: a build script compiled in another checkout must not embed its shaders.
    let dir = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join("shaders");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<_> = fs::read_dir(&dir)
        .expect("shaders/ folder")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    names.sort();
    let mut out = String::from("/// Every WGSL file under `shaders/`: (file stem, source).\npub static SHADERS: &[(&str, &str)] = &[\n");
    for p in &names {
        println!("cargo:rerun-if-changed={}", p.display());
        let stem = p.file_stem().unwrap().to_string_lossy();
        out += &format!("    ({stem:?}, include_str!({:?})),\n", p.display().to_string());
    }
    out += "];\n";
    fs::write(Path::new(&env::var("OUT_DIR").unwrap()).join("shaders.rs"), out).unwrap();
}
