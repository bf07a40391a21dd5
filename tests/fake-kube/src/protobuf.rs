//! The little of Kubernetes' protobuf encoding the fake server reads: the `k8s\0` +
//! `runtime.Unknown` envelope kubectl's typed clients send, and the body of a
//! SelfSubjectAccessReview (for `kubectl auth can-i`). Other protobuf bodies answer 415.

use serde_json::{Value, json};

/// One decoded field: number and its length-delimited bytes (other wire types are skipped).
fn fields(mut b: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        match key & 7 {
            0 => {
                varint(&mut b)?;
            }
            1 => b = b.get(8..)?,
            5 => b = b.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut b)?).ok()?;
                let (data, rest) = (b.get(..len)?, b.get(len..)?);
                out.push((key >> 3, data));
                b = rest;
            }
            _ => return None,
        }
    }
    Some(out)
}

fn field<'a>(fs: &[(u64, &'a [u8])], n: u64) -> Option<&'a [u8]> {
    fs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
}

fn string(fs: &[(u64, &[u8])], n: u64) -> String {
    field(fs, n)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// The JSON equivalent of a protobuf SelfSubjectAccessReview request, or `None` when the
/// body is not one.
pub fn self_subject_access_review(body: &[u8]) -> Option<Value> {
    let envelope = fields(body.strip_prefix(b"k8s\0")?)?;
    let type_meta = fields(field(&envelope, 1)?)?;
    if string(&type_meta, 2) != "SelfSubjectAccessReview" {
        return None;
    }
    let review = fields(field(&envelope, 2)?)?;
    let spec = fields(field(&review, 2).unwrap_or(&[]))?;
    let mut out = json!({ "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "metadata": {}, "spec": {} });
    if let Some(ra) = field(&spec, 1) {
        let ra = fields(ra)?;
        let names = [
            "namespace",
            "verb",
            "group",
            "version",
            "resource",
            "subresource",
            "name",
        ];
        let mut attrs = serde_json::Map::new();
        for (i, n) in names.iter().enumerate() {
            attrs.insert((*n).to_string(), json!(string(&ra, i as u64 + 1)));
        }
        out["spec"]["resourceAttributes"] = Value::Object(attrs);
    } else if let Some(nra) = field(&spec, 2) {
        let nra = fields(nra)?;
        out["spec"]["nonResourceAttributes"] =
            json!({ "path": string(&nra, 1), "verb": string(&nra, 2) });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(n: u8, data: &[u8]) -> Vec<u8> {
        let mut v = vec![(n << 3) | 2, data.len() as u8];
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn decodes_a_review() {
        let ra = [
            ld(1, b"prod"),
            ld(2, b"create"),
            ld(5, b"pods"),
            ld(6, b"exec"),
        ]
        .concat();
        let review = [ld(1, b""), ld(2, &ld(1, &ra))].concat();
        let tm = [
            ld(1, b"authorization.k8s.io/v1"),
            ld(2, b"SelfSubjectAccessReview"),
        ]
        .concat();
        let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &review)].concat();
        let v = self_subject_access_review(&body).expect("decoded");
        assert_eq!(v["spec"]["resourceAttributes"]["verb"], "create");
        assert_eq!(v["spec"]["resourceAttributes"]["subresource"], "exec");
        assert!(self_subject_access_review(b"k8s\0\xff").is_none());
        assert!(self_subject_access_review(b"{}").is_none());
    }
}
