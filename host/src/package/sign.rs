//! Signatures embedded in the component, in the format of the WebAssembly
//! signatures proposal as `wasmsign2` implements it (the crate signs and
//! verifies here, so its own verifier accepts ours): a `signature` custom
//! section first, over the SHA-256 of every byte after it. Signing is the
//! last step: any later change (a repack, one flipped bit) breaks it.
//!
//! Keys: Ed25519, written by [`keygen`] in wasmsign2's raw format (`KEY`,
//! secret, 0600; `KEY.pub`); read in any format wasmsign2 reads (raw,
//! PEM, DER, OpenSSH `ssh-ed25519`). Signatures carry the key id of the
//! signing key (wasmsign2's default id), so a refusal can say which key
//! signed.

use std::io::Cursor;
use std::path::Path;

use wasmsign2::{KeyPair, Module, PublicKey, SecretKey, SignatureData, WSError};

use super::{PackageError, write_atomic};
use crate::hooks::manifest::{self, Section};

const SECTION: &str = "signature";

fn ws(what: &str, e: WSError) -> PackageError {
    PackageError::Input(format!("{what}: {e}"))
}

/// Write a new key pair: `path` (secret, mode 0600) and `path.pub`.
/// Refuses to overwrite an existing key.
pub fn keygen(path: &Path) -> Result<PublicKey, PackageError> {
    let public = pub_path(path);
    for p in [path, public.as_path()] {
        if p.exists() {
            return Err(PackageError::Input(format!(
                "{} exists: refusing to overwrite a key",
                p.display()
            )));
        }
    }
    let kp = KeyPair::generate();
    write_secret(path, &kp.sk.to_bytes())?;
    write_atomic(&public, &kp.pk.to_bytes())?;
    Ok(kp.pk)
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| PackageError::io(path, e))?;
    f.write_all(bytes).map_err(|e| PackageError::io(path, e))
}

/// `KEY` → `KEY.pub`.
pub fn pub_path(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    s.into()
}

pub fn read_secret(path: &Path) -> Result<SecretKey, PackageError> {
    SecretKey::from_any_file(path).map_err(|e| {
        PackageError::Input(format!(
            "{}: not an Ed25519 secret key (raw, PEM, DER or OpenSSH): {e}",
            path.display()
        ))
    })
}

pub fn read_public(path: &Path) -> Result<PublicKey, PackageError> {
    PublicKey::from_any_file(path)
        .map(PublicKey::attach_default_key_id)
        .map_err(|e| {
            PackageError::Input(format!(
                "{}: not an Ed25519 public key (raw, PEM, DER or OpenSSH): {e}",
                path.display()
            ))
        })
}

/// The key id wasmsign2 gives `pk`, as hex.
pub fn key_id(pk: &PublicKey) -> String {
    let pk = PublicKey {
        pk: pk.pk,
        key_id: None,
    }
    .attach_default_key_id();
    pk.key_id().map(hex::encode).unwrap_or_default()
}

/// Sign `bytes` (replacing an earlier signature).
pub fn sign(bytes: &[u8], sk: &SecretKey) -> Result<Vec<u8>, PackageError> {
    crate::hooks::artifact::check_header(bytes)?;
    let module = Module::deserialize(&mut Cursor::new(bytes)).map_err(|e| ws("component", e))?;
    let pk = PublicKey {
        pk: sk.sk.public_key(),
        key_id: None,
    }
    .attach_default_key_id();
    let signed = sk.sign(module, pk.key_id()).map_err(|e| ws("signing", e))?;
    let mut out = Vec::new();
    signed.serialize(&mut out).map_err(|e| ws("signing", e))?;
    Ok(out)
}

/// What the signature section of a component says, checked against its
/// content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// No signature section.
    Unsigned,
    /// Signed; the content is what was signed. `key_ids`: the ids carried
    /// by the signatures (hex; may be empty).
    Signed { key_ids: Vec<String> },
    /// A signature section whose signed hashes do not match the content:
    /// changed after signing (or the section is damaged).
    Modified,
}

/// Read the signature section of `bytes` (not yet checked against any key).
/// Only the first section is parsed before the content is hashed, so a
/// change anywhere after it reads as [`Signature::Modified`], whatever it
/// broke.
pub fn signature(bytes: &[u8]) -> Result<Signature, PackageError> {
    crate::hooks::artifact::check_header(bytes)?;
    let first = first_section(bytes);
    let Some((0, body, end)) = first else {
        return misplaced(bytes);
    };
    let mut p = 0usize;
    let name_len = read_leb(body, &mut p).unwrap_or(usize::MAX);
    let name = body.get(p..p.saturating_add(name_len));
    if name != Some(SECTION.as_bytes()) {
        return misplaced(bytes);
    }
    let payload = &body[p + name_len..];
    let Ok(data) = SignatureData::deserialize(payload) else {
        return Ok(Signature::Modified);
    };
    // What the signature covers: every byte after its own section.
    let content = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes[end..]).to_vec()
    };
    let mut key_ids = Vec::new();
    let mut covered = false;
    for set in &data.signed_hashes_set {
        covered |= set.hashes.contains(&content);
        for s in &set.signatures {
            if let Some(id) = &s.key_id {
                key_ids.push(hex::encode(id));
            }
        }
    }
    Ok(if covered {
        Signature::Signed { key_ids }
    } else {
        Signature::Modified
    })
}

/// No leading signature section: unsigned, unless one sits further on
/// (wasmsign2 reads only a leading one: something was put before it).
fn misplaced(bytes: &[u8]) -> Result<Signature, PackageError> {
    let later = manifest::sections(bytes)?
        .iter()
        .any(|s| matches!(s, Section::Custom { name, .. } if *name == SECTION));
    Ok(if later {
        Signature::Modified
    } else {
        Signature::Unsigned
    })
}

fn read_leb(bytes: &[u8], pos: &mut usize) -> Option<usize> {
    let mut v = 0usize;
    for shift in (0..35).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The first section after the header: its id, body and end offset.
fn first_section(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let id = *bytes.get(8)?;
    let mut pos = 9;
    let size = read_leb(bytes, &mut pos)?;
    let end = pos.checked_add(size).filter(|&e| e <= bytes.len())?;
    Some((id, &bytes[pos..end], end))
}

/// Whether `pk` signed `bytes` as they are (wasmsign2's verifier).
pub fn verified_by(bytes: &[u8], pk: &PublicKey) -> bool {
    pk.verify(&mut Cursor::new(bytes), None).is_ok()
}
