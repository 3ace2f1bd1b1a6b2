//! A small MessagePack codec: the wire format of Terraform's `DynamicValue`s.
//!
//! Why our own: the provider needs maps, strings, nil and Terraform's unknown-value extension, a
//! few hundred bytes at a time; a crate for that would be more code to audit than this. The
//! decoder accepts every MessagePack type (Terraform may pick any encoding of a type, see
//! `docs/plugin-protocol/object-wire-format.md`) and treats any extension as an unknown value,
//! as that document asks; lengths are checked against the bytes left before anything is
//! allocated, and nesting is bounded, so a hostile value costs no more than its own size.

use std::fmt;

/// How deep arrays and maps may nest (the provider's values are one map of strings).
const MAX_DEPTH: usize = 32;

/// A decoded MessagePack value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `nil`: Terraform's null.
    Nil,
    /// A boolean.
    Bool(bool),
    /// Any integer (MessagePack's range is `-2^63 ..= 2^64-1`).
    Int(i128),
    /// A 32- or 64-bit float.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// Raw bytes.
    Bin(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// A map, in wire order.
    Map(Vec<(Value, Value)>),
    /// An extension value: Terraform's unknown (code 0, or 12 with refinements, which are ignored).
    Unknown,
}

/// Why bytes are not one MessagePack value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The bytes end inside a value.
    #[error("the value ends early")]
    Truncated,
    /// Bytes follow the value.
    #[error("{0} bytes follow the value")]
    Trailing(usize),
    /// `0xc1`, which MessagePack never uses.
    #[error("byte {0:#04x} starts no MessagePack value")]
    Reserved(u8),
    /// A string that is not UTF-8.
    #[error("a string is not UTF-8")]
    NotUtf8,
    /// Arrays and maps nested deeper than [`MAX_DEPTH`].
    #[error("values nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Decodes exactly one value from `bytes`.
pub(crate) fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut reader = Reader { rest: bytes };
    let value = reader.value(0)?;
    match reader.rest.len() {
        0 => Ok(value),
        left => Err(DecodeError::Trailing(left)),
    }
}

/// Encodes `value` in the most compact form of its type.
pub(crate) fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out, value);
    out
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], DecodeError> {
        if count > self.rest.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.rest.split_at(count);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0_u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    /// A big-endian length of `width` bytes (1, 2 or 4).
    fn length(&mut self, width: usize) -> Result<usize, DecodeError> {
        let length = match width {
            1 => u32::from(self.byte()?),
            2 => u32::from(u16::from_be_bytes(self.array()?)),
            _ => u32::from_be_bytes(self.array()?),
        };
        usize::try_from(length).map_err(|_| DecodeError::Truncated)
    }

    fn string(&mut self, length: usize) -> Result<Value, DecodeError> {
        let bytes = self.take(length)?;
        String::from_utf8(bytes.to_vec()).map(Value::Str).map_err(|_| DecodeError::NotUtf8)
    }

    /// An extension's payload, skipped: every extension is an unknown value.
    fn extension(&mut self, length: usize) -> Result<Value, DecodeError> {
        self.take(1 + length)?;
        Ok(Value::Unknown)
    }

    fn items(&mut self, count: usize, depth: usize) -> Result<Vec<Value>, DecodeError> {
        // Each item takes at least one byte: a count past the bytes left is a lie, not a reason
        // to reserve memory.
        let mut items = Vec::with_capacity(count.min(self.rest.len()));
        for _ in 0..count {
            items.push(self.value(depth + 1)?);
        }
        Ok(items)
    }

    fn map(&mut self, count: usize, depth: usize) -> Result<Value, DecodeError> {
        let mut entries = Vec::with_capacity(count.min(self.rest.len() / 2));
        for _ in 0..count {
            let key = self.value(depth + 1)?;
            entries.push((key, self.value(depth + 1)?));
        }
        Ok(Value::Map(entries))
    }

    /// One value, one arm per MessagePack marker (the format's own table).
    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let marker = self.byte()?;
        let value = match marker {
            0x00..=0x7f => Value::Int(i128::from(marker)),
            0x80..=0x8f => self.map(usize::from(marker & 0x0f), depth)?,
            0x90..=0x9f => Value::Array(self.items(usize::from(marker & 0x0f), depth)?),
            0xa0..=0xbf => self.string(usize::from(marker & 0x1f))?,
            0xc0 => Value::Nil,
            0xc1 => return Err(DecodeError::Reserved(marker)),
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let length = self.length(1 << (marker - 0xc4))?;
                Value::Bin(self.take(length)?.to_vec())
            }
            0xc7..=0xc9 => {
                let length = self.length(1 << (marker - 0xc7))?;
                self.extension(length)?
            }
            0xca => Value::Float(f64::from(f32::from_be_bytes(self.array()?))),
            0xcb => Value::Float(f64::from_be_bytes(self.array()?)),
            0xcc => Value::Int(i128::from(self.byte()?)),
            0xcd => Value::Int(i128::from(u16::from_be_bytes(self.array()?))),
            0xce => Value::Int(i128::from(u32::from_be_bytes(self.array()?))),
            0xcf => Value::Int(i128::from(u64::from_be_bytes(self.array()?))),
            0xd0 => Value::Int(i128::from(i8::from_be_bytes(self.array()?))),
            0xd1 => Value::Int(i128::from(i16::from_be_bytes(self.array()?))),
            0xd2 => Value::Int(i128::from(i32::from_be_bytes(self.array()?))),
            0xd3 => Value::Int(i128::from(i64::from_be_bytes(self.array()?))),
            0xd4..=0xd8 => self.extension(1 << (marker - 0xd4))?,
            0xd9..=0xdb => {
                let length = self.length(1 << (marker - 0xd9))?;
                self.string(length)?
            }
            0xdc | 0xdd => {
                let count = self.length(if marker == 0xdc { 2 } else { 4 })?;
                Value::Array(self.items(count, depth)?)
            }
            0xde | 0xdf => {
                let count = self.length(if marker == 0xde { 2 } else { 4 })?;
                self.map(count, depth)?
            }
            0xe0..=0xff => Value::Int(i128::from(i8::from_be_bytes([marker]))),
        };
        Ok(value)
    }
}

/// Writes the header of a string, bytes, array or map of `length` items: the fix form when the
/// type has one (`fix`: marker and limit) and `length` fits it, else the narrowest of the 8-
/// (if the type has one), 16- and 32-bit forms.
fn header(out: &mut Vec<u8>, length: usize, fix: Option<(u8, usize)>, markers: (Option<u8>, u8, u8)) {
    let (marker8, marker16, marker32) = markers;
    if let Some((base, limit)) = fix
        && length < limit
    {
        out.push(base | u8::try_from(length).unwrap_or_default());
    } else if let (Some(marker), Ok(short)) = (marker8, u8::try_from(length)) {
        out.extend([marker, short]);
    } else if let Ok(medium) = u16::try_from(length) {
        out.push(marker16);
        out.extend(medium.to_be_bytes());
    } else {
        // Values written here come from this process (a state of three strings): they fit.
        out.push(marker32);
        out.extend(u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes());
    }
}

fn write(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Nil => out.push(0xc0),
        Value::Bool(flag) => out.push(if *flag { 0xc3 } else { 0xc2 }),
        Value::Int(number) => write_int(out, *number),
        Value::Float(number) => {
            out.push(0xcb);
            out.extend(number.to_be_bytes());
        }
        Value::Str(text) => {
            header(out, text.len(), Some((0xa0, 32)), (Some(0xd9), 0xda, 0xdb));
            out.extend(text.as_bytes());
        }
        Value::Bin(bytes) => {
            header(out, bytes.len(), None, (Some(0xc4), 0xc5, 0xc6));
            out.extend(bytes);
        }
        Value::Array(items) => {
            header(out, items.len(), Some((0x90, 16)), (None, 0xdc, 0xdd));
            items.iter().for_each(|item| write(out, item));
        }
        Value::Map(entries) => {
            header(out, entries.len(), Some((0x80, 16)), (None, 0xde, 0xdf));
            for (key, item) in entries {
                write(out, key);
                write(out, item);
            }
        }
        // The refinement-free form the wire-format document asks for: fixext 1, code 0.
        Value::Unknown => out.extend([0xd4, 0x00, 0x00]),
    }
}

fn write_int(out: &mut Vec<u8>, number: i128) {
    if let Ok(small) = u8::try_from(number)
        && small < 0x80
    {
        out.push(small);
    } else if let Ok(negative) = i8::try_from(number)
        && negative >= -32
    {
        out.extend(negative.to_be_bytes());
    } else if let Ok(signed) = i64::try_from(number) {
        out.push(0xd3);
        out.extend(signed.to_be_bytes());
    } else {
        // Past i64: only u64 remains in MessagePack's range.
        out.push(0xcf);
        out.extend(u64::try_from(number).unwrap_or(u64::MAX).to_be_bytes());
    }
}

impl fmt::Display for Value {
    /// The value's type, for error messages (values themselves may be secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Value::Nil => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Bin(_) => "bytes",
            Value::Array(_) => "an array",
            Value::Map(_) => "a map",
            Value::Unknown => "an unknown value",
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn round_trips_every_type_in_every_width() {
        let long = "x".repeat(70_000);
        let values = [
            Value::Nil,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(0),
            Value::Int(127),
            Value::Int(-32),
            Value::Int(-33),
            Value::Int(1 << 40),
            Value::Int(i128::from(u64::MAX)),
            Value::Float(1.5),
            Value::Str(String::new()),
            Value::Str("a".repeat(31)),
            Value::Str("a".repeat(32)),
            Value::Str("a".repeat(300)),
            Value::Str(long.clone()),
            Value::Bin(vec![1, 2, 3]),
            Value::Array((0..20).map(Value::Int).collect()),
            Value::Map(vec![(Value::Str("k".into()), Value::Unknown)]),
            Value::Map((0..17).map(|n| (Value::Int(n), Value::Nil)).collect()),
        ];
        for value in values {
            assert_eq!(decode(&encode(&value)).unwrap(), value, "{value}");
        }
        assert_eq!(encode(&Value::Str(long))[..5], [0xdb, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn reads_terraforms_encodings() {
        // What cty's msgpack writes for {content = "hi", id = <unknown>, name = "a"}, with the
        // refined-unknown extension (code 12) for the id.
        let bytes = [
            0x83, 0xa7, b'c', b'o', b'n', b't', b'e', b'n', b't', 0xa2, b'h', b'i', 0xa2, b'i', b'd', 0xc7, 0x03, 0x0c,
            0x81, 0x01, 0xc2, 0xa4, b'n', b'a', b'm', b'e', 0xd9, 0x01, b'a',
        ];
        let Value::Map(entries) = decode(&bytes).unwrap() else { panic!("a map") };
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].1, Value::Unknown);
        assert_eq!(entries[2].1, Value::Str("a".into()));
        // Numbers in their other encodings.
        assert_eq!(decode(&[0xd0, 0xff]).unwrap(), Value::Int(-1));
        assert_eq!(decode(&[0xcd, 0x01, 0x00]).unwrap(), Value::Int(256));
        assert_eq!(decode(&[0xca, 0x3f, 0xc0, 0, 0]).unwrap(), Value::Float(1.5));
    }

    #[test]
    fn refuses_malformed_bytes_without_allocating_for_them() {
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0xc0, 0xc0]), Err(DecodeError::Trailing(1)));
        assert_eq!(decode(&[0xc1]), Err(DecodeError::Reserved(0xc1)));
        assert_eq!(decode(&[0xa2, 0xff, 0xfe]), Err(DecodeError::NotUtf8));
        // A map claiming four billion entries in five bytes.
        assert_eq!(decode(&[0xdf, 0xff, 0xff, 0xff, 0xff]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x91; 40]), Err(DecodeError::TooDeep));
    }
}
