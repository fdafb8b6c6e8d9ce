//! Writes the seed corpus, `corpus/<target>/<name>`, from real encodings
//! (records sealed with the fuzz secret): `cargo run --example write_corpus`
//! in `fuzz/`. The unit tests check every seed is accepted or rejected as
//! its name says.

use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, input) in linkmesh_fuzz::seeds() {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(&name), &input)?;
        println!("{target}/{name}: {} bytes", input.len());
    }
    Ok(())
}
