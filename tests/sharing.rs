//! Sharing hook plugins between teams, locally, with the `flexmodel`
//! binary: pack (manifest + standard metadata), inspect, keygen, sign,
//! verify under a trust policy (every refusal), wasmsign2's own verifier,
//! OpenSSH keys, a manifest that disagrees with its component. The
//! registry side is `tests/sharing_registry.rs`.

mod cli_common;
mod sharing_common;

use std::path::Path;
use std::process::Command;

use cli_common::{models, ok};
use flexmodel_tests::artifacts_dir;
use sharing_common::{err, fm, packed, s, tmp, trust};

#[test]
fn pack_inspect_sign_verify_and_every_refusal() {
    let dir = tmp("sign");
    let cache = dir.join("cache");
    let plugin = packed(&dir, &cache);
    let v: serde_json::Value = serde_json::from_str(&ok(&fm(
        &cache,
        &["plugin", "inspect", s(&plugin), "--json"],
    )))
    .unwrap();
    assert_eq!(v["manifest"]["name"], "acme:scale");
    assert_eq!(
        v["manifest"]["contract"],
        format!("flexmodel:hook@{}", flexmodel::hooks::WIT_VERSION)
    );
    assert_eq!(v["manifest"]["edit_mode"], "edits");
    assert_eq!(v["manifest"]["resources"]["memory_bytes"], 67108864);
    assert_eq!(
        v["metadata"]["authors"],
        "Acme Interpretability <interp@acme.example>"
    );
    assert_eq!(v["metadata"]["licenses"], "Apache-2.0");
    assert_eq!(v["metadata"]["revision"], "0123abc");
    assert_eq!(v["info"]["name"], "scale");
    assert_eq!(v["signature"]["state"], "unsigned");
    let bytes = std::fs::read(&plugin).unwrap();
    assert_eq!(v["sha256"], flexmodel::package::digest(&bytes));

    ok(&fm(
        &cache,
        &["plugin", "keygen", "-o", s(&dir.join("acme"))],
    ));
    ok(&fm(
        &cache,
        &["plugin", "keygen", "-o", s(&dir.join("other"))],
    ));
    let e = err(&fm(
        &cache,
        &["plugin", "keygen", "-o", s(&dir.join("acme"))],
    ));
    assert!(e.contains("refusing to overwrite"), "{e}");
    let signed = dir.join("scale.signed.wasm");
    ok(&fm(
        &cache,
        &[
            "plugin",
            "sign",
            s(&plugin),
            "--key",
            s(&dir.join("acme")),
            "-o",
            s(&signed),
        ],
    ));
    let sbytes = std::fs::read(&signed).unwrap();
    // wasmsign2's own verifier accepts our signature.
    let pk = wasmsign2::PublicKey::from_file(dir.join("acme.pub")).unwrap();
    pk.verify(&mut std::io::Cursor::new(&sbytes), None).unwrap();
    let wrong = wasmsign2::PublicKey::from_file(dir.join("other.pub")).unwrap();
    assert!(
        wrong
            .verify(&mut std::io::Cursor::new(&sbytes), None)
            .is_err()
    );

    let t = trust(
        &dir,
        "default = \"require-signed\"\n[namespace.acme]\nkeys = [\"acme.pub\"]\n[namespace.other]\nkeys = [\"other.pub\"]\n",
    );
    let out = ok(&fm(
        &cache,
        &["plugin", "verify", s(&signed), "--trust", s(&t)],
    ));
    assert!(out.contains("signed by"), "{out}");

    let refused = |file: &Path, trust: &Path| {
        err(&fm(
            &cache,
            &["plugin", "verify", s(file), "--trust", s(trust)],
        ))
    };
    // Unsigned.
    assert!(refused(&plugin, &t).contains("unsigned"));
    // Not packed: no namespace.
    let bare = dir.join("bare.wasm");
    std::fs::write(
        &bare,
        flexmodel::package::pack::strip(&bytes, &["flexmodel-manifest"]).unwrap(),
    )
    .unwrap();
    assert!(refused(&bare, &t).contains("no manifest"));
    // Signed by a key trusted for another namespace.
    let by_other = dir.join("by-other.wasm");
    ok(&fm(
        &cache,
        &[
            "plugin",
            "sign",
            s(&plugin),
            "--key",
            s(&dir.join("other")),
            "-o",
            s(&by_other),
        ],
    ));
    let e = refused(&by_other, &t);
    assert!(
        e.contains("trusted for namespace other, not for acme"),
        "{e}"
    );
    // Signed by a key nobody trusts.
    let t2 = trust(
        &dir,
        "default = \"require-signed\"\n[namespace.acme]\nkeys = [\"acme.pub\"]\n",
    );
    let e = refused(&by_other, &t2);
    assert!(e.contains("not trusted"), "{e}");
    // One bit changed anywhere after the signature section.
    for at in [sbytes.len() / 2, sbytes.len() - 1] {
        let mut b = sbytes.clone();
        b[at] ^= 1;
        let f = dir.join("flipped.wasm");
        std::fs::write(&f, &b).unwrap();
        let e = refused(&f, &t);
        assert!(e.contains("changed after signing"), "{e}");
    }
    // An edit after signing (a repack) breaks it: the repack drops the
    // signature, and a manifest edited in place no longer matches.
    let repacked = dir.join("repacked.wasm");
    ok(&fm(
        &cache,
        &[
            "plugin",
            "pack",
            s(&signed),
            "--manifest",
            s(&dir.join("plugin.toml")),
            "-o",
            s(&repacked),
        ],
    ));
    assert!(refused(&repacked, &t).contains("unsigned"));
    let mut edited = sbytes.clone();
    let i = sbytes
        .windows(10)
        .position(|w| w == b"Apache-2.0")
        .expect("licenses in the metadata");
    edited[i..i + 10].copy_from_slice(b"Apache-3.0");
    let f = dir.join("edited.wasm");
    std::fs::write(&f, &edited).unwrap();
    assert!(refused(&f, &t).contains("changed after signing"));
    // OpenSSH ed25519 keys work too: signed with the private key, trusted
    // through the `.pub` line.
    let ssh = dir.join("ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let kg = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f", s(&ssh.join("id"))])
        .status()
        .expect("ssh-keygen (openssh-client; scripts/setup.sh installs it)");
    assert!(kg.success());
    let by_ssh = ssh.join("signed.wasm");
    ok(&fm(
        &cache,
        &[
            "plugin",
            "sign",
            s(&plugin),
            "--key",
            s(&ssh.join("id")),
            "-o",
            s(&by_ssh),
        ],
    ));
    let ssh_trust = trust(
        &ssh,
        "default = \"require-signed\"\n[namespace.acme]\nkeys = [\"id.pub\"]\n",
    );
    ok(&fm(
        &cache,
        &["plugin", "verify", s(&by_ssh), "--trust", s(&ssh_trust)],
    ));
    assert!(refused(&by_ssh, &t).contains("not trusted"));
    // Under allow-unsigned an unsigned plugin passes, a broken signature never.
    let open = trust(&dir, "default = \"allow-unsigned\"\n");
    ok(&fm(
        &cache,
        &["plugin", "verify", s(&plugin), "--trust", s(&open)],
    ));
    assert!(refused(&f, &open).contains("changed after signing"));
    // A per-namespace policy overrides the default.
    let mixed = trust(
        &dir,
        "default = \"allow-unsigned\"\n[namespace.acme]\nkeys = [\"acme.pub\"]\npolicy = \"require-signed\"\n",
    );
    assert!(refused(&plugin, &mixed).contains("unsigned"));

    // `run` takes the policy: refused before anything runs, accepted when signed.
    let model = models().join("gpt2-tiny");
    let run = |file: &Path, config: &str| {
        fm(
            &cache,
            &[
                "run",
                "--model",
                s(&model),
                "--token-ids",
                "1,2,3,4",
                "--hook",
                &format!("{}@transformer.h.0={config}", s(file)),
                "--trust",
                s(&t),
            ],
        )
    };
    assert!(err(&run(&plugin, r#"{"factor":2}"#)).contains("unsigned"));
    // So does `generate`.
    let e = err(&fm(
        &cache,
        &[
            "generate",
            "--model",
            s(&model),
            "--token-ids",
            "1,2,3",
            "--max-new-tokens",
            "2",
            "--hook",
            &format!("{}@transformer.h.0={{\"factor\":2}}", s(&plugin)),
            "--trust",
            s(&t),
        ],
    ));
    assert!(e.contains("unsigned"), "{e}");
    ok(&run(&signed, r#"{"factor":2}"#));
    // The manifest's config schema is checked before init, naming the field.
    let e = err(&run(&signed, r#"{"factor":"two"}"#));
    assert!(e.contains("/factor"), "{e}");
    let e = err(&run(&signed, r#"{"factr":2}"#));
    assert!(e.contains("factr"), "{e}");
}

#[test]
fn a_manifest_that_disagrees_with_the_component_is_refused() {
    let dir = tmp("mismatch");
    let cache = dir.join("cache");
    for (extra, what) in [
        ("version = \"9.9.9\"\n", "version"),
        ("hook_points = [\"blocks.*\"]\n", "hook points"),
        ("edit_mode = \"read-only\"\n", "edit mode"),
        ("[resources]\nmemory_bytes = 1099511627776\n", "memory"),
    ] {
        let toml = dir.join("bad.toml");
        std::fs::write(&toml, format!("name = \"acme:scale\"\n{extra}")).unwrap();
        let e = err(&fm(
            &cache,
            &[
                "plugin",
                "pack",
                s(&artifacts_dir().join("scale.wasm")),
                "--manifest",
                s(&toml),
                "-o",
                s(&dir.join("x.wasm")),
            ],
        ));
        assert!(e.contains(what), "{what}: {e}");
        assert!(!dir.join("x.wasm").exists(), "nothing written");
    }
    // A manifest section edited into a packed component: refused at load.
    let plugin = packed(&dir, &cache);
    let bytes = std::fs::read(&plugin).unwrap();
    let stripped = flexmodel::package::pack::strip(&bytes, &["flexmodel-manifest"]).unwrap();
    let mut forged = stripped.clone();
    let m = serde_json::json!({
        "schema": "flexmodel-manifest/1", "name": "acme:scale", "version": "0.1.0",
        "contract": "flexmodel:hook@0.1.0", "hook_points": [], "edit_mode": "edits",
    });
    flexmodel::package::pack::push_custom(
        &mut forged,
        "flexmodel-manifest",
        m.to_string().as_bytes(),
    );
    let f = dir.join("forged.wasm");
    std::fs::write(&f, &forged).unwrap();
    let model = models().join("gpt2-tiny");
    let e = err(&fm(
        &cache,
        &[
            "run",
            "--model",
            s(&model),
            "--token-ids",
            "1,2",
            "--hook",
            &format!("{}@transformer.h.0", s(&f)),
        ],
    ));
    assert!(e.contains("contract"), "{e}");
}
