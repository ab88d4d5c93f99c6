//! manifests/base/crd-virtual-networks.yaml is `virtlink crd --vnet`'s
//! output, i.e. generated from the Rust types.

#[test]
fn crd_file_is_generated_from_the_rust_types() -> anyhow::Result<()> {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/base/crd-virtual-networks.yaml");
    let text = std::fs::read_to_string(&file)?;
    assert_eq!(
        text,
        virtlink_vnet::model::crds_yaml()?,
        "regenerate with `virtlink crd --vnet > {}`",
        file.display()
    );
    Ok(())
}
