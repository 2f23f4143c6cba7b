//! Tensors as bytes for the collectives: a small header (dtype, rank, six
//! bytes of padding, shape) and the row-major data, which starts at a
//! multiple of 8 bytes, so a received message can be read in place
//! ([`view`]) when its buffer is aligned.

use bytes::{BufMut, Bytes, BytesMut};
use tch::{Device, Kind, Tensor};

fn code(kind: Kind) -> Option<u8> {
    Some(match kind {
        Kind::Float => 0,
        Kind::Half => 1,
        Kind::BFloat16 => 2,
        Kind::Double => 3,
        Kind::Int64 => 4,
        Kind::Int => 5,
        Kind::Uint8 => 6,
        Kind::Bool => 7,
        _ => return None,
    })
}

fn kind(code: u8) -> Option<Kind> {
    Some(match code {
        0 => Kind::Float,
        1 => Kind::Half,
        2 => Kind::BFloat16,
        3 => Kind::Double,
        4 => Kind::Int64,
        5 => Kind::Int,
        6 => Kind::Uint8,
        7 => Kind::Bool,
        _ => return None,
    })
}

/// Serialise `t` (any device; copied to the host).
pub fn encode(t: &Tensor) -> Result<Bytes, String> {
    let c = code(t.kind()).ok_or_else(|| format!("dtype {:?} cannot be sent", t.kind()))?;
    let t = t.to_device(Device::Cpu).contiguous();
    let shape = t.size();
    let numel = t.numel();
    let nbytes = numel * t.kind().elt_size_in_bytes();
    let mut out = BytesMut::with_capacity(header_len(shape.len()) + nbytes);
    out.put_u8(c);
    out.put_u8(shape.len() as u8);
    out.put_bytes(0, 6);
    for d in &shape {
        out.put_i64_le(*d);
    }
    if numel > 0 {
        // SAFETY: `t` is a contiguous CPU tensor of `nbytes` bytes that stays
        // alive (and unaliased for writing) while its bytes are copied.
        let data = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, nbytes) };
        out.extend_from_slice(data);
    }
    Ok(out.freeze())
}

fn header_len(nd: usize) -> usize {
    8 + 8 * nd
}

/// The dtype, shape and data of a message, checked.
fn parse(b: &[u8]) -> Result<(Kind, Vec<i64>, &[u8]), String> {
    if b.len() < 8 {
        return Err("tensor message shorter than its header".into());
    }
    let k = kind(b[0]).ok_or_else(|| format!("unknown dtype code {}", b[0]))?;
    let nd = b[1] as usize;
    let hdr = header_len(nd);
    if b.len() < hdr {
        return Err("tensor message shorter than its shape".into());
    }
    let shape: Vec<i64> = (0..nd)
        .map(|i| i64::from_le_bytes(b[8 + 8 * i..16 + 8 * i].try_into().unwrap_or([0; 8])))
        .collect();
    if shape.iter().any(|&d| d < 0) {
        return Err(format!("negative dimension in shape {shape:?}"));
    }
    // Checked: a crafted shape whose product wraps must not pass the length
    // check (a view reads exactly `want` bytes in place).
    let want = shape
        .iter()
        .try_fold(k.elt_size_in_bytes(), |n, &d| n.checked_mul(d as usize))
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    if b.len() - hdr != want {
        return Err(format!(
            "tensor {shape:?} {k:?} needs {want} bytes, message has {}",
            b.len() - hdr
        ));
    }
    Ok((k, shape, &b[hdr..]))
}

/// The tensor `encode` serialised, on the CPU (a copy).
pub fn decode(b: &[u8]) -> Result<Tensor, String> {
    let (k, shape, data) = parse(b)?;
    Tensor::f_from_data_size(data, &shape, k).map_err(|e| e.to_string())
}

/// The tensor of message `b`, read in place when its data is aligned for
/// its dtype (else decoded into a copy).
///
/// # Safety
/// An in-place view borrows `b`'s memory without a lifetime: it must not be
/// used, nor anything sharing its storage, after `b` is dropped or changed.
pub unsafe fn view(b: &[u8]) -> Result<Tensor, String> {
    let (k, shape, data) = parse(b)?;
    if data.is_empty() || !(data.as_ptr() as usize).is_multiple_of(k.elt_size_in_bytes()) {
        return Tensor::f_from_data_size(data, &shape, k).map_err(|e| e.to_string());
    }
    // SAFETY: `data` holds exactly the tensor's bytes (checked by `parse`),
    // aligned for `k`; the caller keeps `b` alive while the view is used.
    unsafe { Tensor::f_from_blob(data.as_ptr(), &shape, &[], k, Device::Cpu) }
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = Tensor::arange(24, (Kind::Float, Device::Cpu)).view([2, 3, 4]);
        let back = decode(&encode(&t.transpose(0, 2)).unwrap()).unwrap();
        assert!(back.equal(&t.transpose(0, 2).contiguous()));
        let e = Tensor::zeros([0, 5], (Kind::BFloat16, Device::Cpu));
        assert_eq!(decode(&encode(&e).unwrap()).unwrap().size(), vec![0, 5]);
        assert!(decode(&[0, 1, 2]).is_err());
        // A shape whose element count wraps around is refused, not viewed.
        let mut bad = vec![0u8, 2, 0, 0, 0, 0, 0, 0];
        bad.extend((1i64 << 62).to_le_bytes());
        bad.extend(4i64.to_le_bytes());
        assert!(decode(&bad).is_err());
        // SAFETY: `bad` outlives anything made from it (nothing is).
        assert!(unsafe { view(&bad) }.is_err());
        let b = encode(&t).unwrap();
        // SAFETY: `b` outlives the view.
        let v = unsafe { view(&b) }.unwrap();
        assert!(v.equal(&t));
    }
}
