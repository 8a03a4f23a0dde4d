//! Payload codecs: how a queue's payloads are stored in the JSON column.
//!
//! Payloads are serde JSON by default ([`Json`]). A [`Codec`] stores them in another serde
//! format instead, carried inside the JSON column as `{"codec": NAME, "data": "<base64>"}`
//! (as malthe/pq carries pickles), so the table, the SQL and every store stay the same. A
//! [`Queue`] handle fixes the codec of one queue; a [`Task`](crate::Task) picks its codec by
//! overriding [`Task::encode`](crate::Task::encode) and [`Task::decode`](crate::Task::decode).
//!
//! Decoding checks the tag, so a payload written with one codec and read with another is a
//! clear [`Error::Format`], never a silently wrong value.

use std::fmt;
use std::marker::PhantomData;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::job::{validate_queue_name, Job, NewJob};

/// The field of an encoded payload naming its codec.
pub const CODEC_FIELD: &str = "codec";
/// The field of an encoded payload holding its base64 bytes.
pub const DATA_FIELD: &str = "data";

/// A serde format for payloads.
///
/// Implement it for a binary format with [`wrap_bytes`] and [`unwrap_bytes`]:
///
/// ```
/// use pq_api::codec::{unwrap_bytes, wrap_bytes, Codec};
/// use pq_api::Result;
/// use serde::{de::DeserializeOwned, Serialize};
/// use serde_json::Value;
///
/// /// JSON text, base64-encoded: a stand-in for a real binary format.
/// struct Opaque;
/// impl Codec for Opaque {
///     const NAME: &'static str = "opaque";
///     fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Value> {
///         Ok(wrap_bytes(Self::NAME, &serde_json::to_vec(value)?))
///     }
///     fn decode<T: DeserializeOwned>(payload: &Value) -> Result<T> {
///         Ok(serde_json::from_slice(&unwrap_bytes(Self::NAME, payload)?)?)
///     }
/// }
///
/// let stored = Opaque::encode(&vec![1, 2, 3])?;
/// assert_eq!(stored["codec"], "opaque");
/// assert_eq!(Opaque::decode::<Vec<i32>>(&stored)?, vec![1, 2, 3]);
/// # Ok::<(), pq_api::Error>(())
/// ```
pub trait Codec: Send + Sync + 'static {
    /// The codec's name, written into every payload it encodes.
    const NAME: &'static str;

    /// Encodes a value into the JSON the job carries.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Value>;

    /// Decodes a value from the JSON a job carries.
    fn decode<T: DeserializeOwned>(payload: &Value) -> Result<T>;
}

/// Plain serde JSON, the default: payloads stay readable and queryable in SQL.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const NAME: &'static str = "json";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Value> {
        Ok(serde_json::to_value(value)?)
    }

    fn decode<T: DeserializeOwned>(payload: &Value) -> Result<T> {
        if let Some(name) = encoded_with(payload) {
            return Err(Error::Format {
                codec: Self::NAME,
                reason: format!("the payload is encoded with the {name:?} codec"),
            });
        }
        Ok(T::deserialize(payload)?)
    }
}

/// MessagePack (with field names, so structs may gain optional fields), base64 in the JSON
/// column: compact, and bytes stay bytes. Feature `msgpack`.
///
/// ```
/// use pq_api::{Codec, MessagePack};
/// let stored = MessagePack::encode(&("thumbnail", vec![0u8; 16]))?;
/// assert_eq!(stored["codec"], "msgpack");
/// let (name, bytes): (String, Vec<u8>) = MessagePack::decode(&stored)?;
/// assert_eq!((name.as_str(), bytes.len()), ("thumbnail", 16));
/// # Ok::<(), pq_api::Error>(())
/// ```
#[cfg(feature = "msgpack")]
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagePack;

#[cfg(feature = "msgpack")]
impl Codec for MessagePack {
    const NAME: &'static str = "msgpack";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Value> {
        let bytes = rmp_serde::to_vec_named(value).map_err(|e| Error::Format {
            codec: Self::NAME,
            reason: e.to_string(),
        })?;
        Ok(wrap_bytes(Self::NAME, &bytes))
    }

    fn decode<T: DeserializeOwned>(payload: &Value) -> Result<T> {
        let bytes = unwrap_bytes(Self::NAME, payload)?;
        rmp_serde::from_slice(&bytes).map_err(|e| Error::Format {
            codec: Self::NAME,
            reason: e.to_string(),
        })
    }
}

/// The name of the codec `payload` was encoded with, if it is an encoded payload.
pub fn encoded_with(payload: &Value) -> Option<&str> {
    let map = payload.as_object()?;
    if map.len() != 2 || !map.contains_key(DATA_FIELD) {
        return None;
    }
    map.get(CODEC_FIELD)?.as_str()
}

/// Carries `bytes` of codec `name` in JSON: `{"codec": name, "data": "<base64>"}`.
pub fn wrap_bytes(name: &str, bytes: &[u8]) -> Value {
    let mut map = serde_json::Map::with_capacity(2);
    map.insert(CODEC_FIELD.into(), Value::from(name));
    map.insert(
        DATA_FIELD.into(),
        Value::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
    );
    Value::Object(map)
}

/// The bytes [`wrap_bytes`] carried, checking they were written by codec `name`.
pub fn unwrap_bytes(name: &'static str, payload: &Value) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::Format {
        codec: name,
        reason,
    };
    match encoded_with(payload) {
        Some(found) if found == name => {}
        Some(found) => {
            return Err(bad(format!(
                "the payload is encoded with the {found:?} codec"
            )))
        }
        None => return Err(bad("the payload is not an encoded payload".into())),
    }
    let data = payload[DATA_FIELD]
        .as_str()
        .ok_or_else(|| bad("the data field is not a string".into()))?;
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| bad(format!("the data field is not base64: {e}")))
}

/// A queue whose payloads use codec `C`: builds its jobs and decodes them.
///
/// ```
/// use pq_api::{Claim, Json, Queue, QueueStore, QueueStoreExt};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = pq_memory::MemoryStore::new();
/// let emails: Queue<Json> = Queue::new("emails")?;
/// store.put_job(emails.job(&("ada@example.com", 3))?.delay("1s")?).await?;
/// # store.put_job(emails.job(&("bob@example.com", 1))?).await?;
/// let job = &store.claim(&Claim::new([emails.name()])).await?[0];
/// let (to, n): (String, u32) = emails.decode(&job.job)?;
/// assert_eq!((to.as_str(), n), ("bob@example.com", 1));
/// # Ok::<(), pq_api::Error>(())
/// # }).unwrap();
/// ```
pub struct Queue<C: Codec = Json> {
    name: String,
    codec: PhantomData<fn() -> C>,
}

impl<C: Codec> Queue<C> {
    /// The queue `name`, its payloads in codec `C`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        validate_queue_name(&name)?;
        Ok(Queue {
            name,
            codec: PhantomData,
        })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A job for this queue carrying `payload` encoded by `C`.
    pub fn job<T: Serialize + ?Sized>(&self, payload: &T) -> Result<NewJob> {
        Ok(NewJob::from_json(self.name.clone(), C::encode(payload)?))
    }

    /// Decodes a job's payload with `C`.
    pub fn decode<T: DeserializeOwned>(&self, job: &Job) -> Result<T> {
        C::decode(&job.payload)
    }
}

impl<C: Codec> Clone for Queue<C> {
    fn clone(&self) -> Self {
        Queue {
            name: self.name.clone(),
            codec: PhantomData,
        }
    }
}

impl<C: Codec> fmt::Debug for Queue<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("codec", &C::NAME)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_refuses_an_encoded_payload() {
        let stored = wrap_bytes("other", b"x");
        assert!(matches!(
            Json::decode::<Value>(&stored),
            Err(Error::Format { .. })
        ));
        // A plain object that merely has a `codec` field is an ordinary payload.
        let plain = serde_json::json!({"codec": "json", "data": 1, "more": true});
        assert_eq!(Json::decode::<Value>(&plain).ok(), Some(plain));
    }

    #[test]
    fn unwrap_checks_the_codec_and_the_base64() {
        assert_eq!(
            unwrap_bytes("a", &wrap_bytes("a", b"hi")).ok(),
            Some(b"hi".to_vec())
        );
        assert!(unwrap_bytes("a", &wrap_bytes("b", b"hi")).is_err());
        let broken = serde_json::json!({"codec": "a", "data": "%%%"});
        assert!(unwrap_bytes("a", &broken).is_err());
        assert!(unwrap_bytes("a", &serde_json::json!([1])).is_err());
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_round_trips_and_is_tagged() -> Result<()> {
        #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Thumb {
            id: u64,
            name: String,
            bytes: Vec<u8>,
        }
        let t = Thumb {
            id: 7,
            name: "cat.png".into(),
            bytes: vec![1, 2, 255],
        };
        let stored = MessagePack::encode(&t)?;
        assert_eq!(encoded_with(&stored), Some("msgpack"));
        assert_eq!(MessagePack::decode::<Thumb>(&stored)?, t);
        assert!(matches!(
            Json::decode::<Thumb>(&stored),
            Err(Error::Format { codec: "json", .. })
        ));
        assert!(matches!(
            MessagePack::decode::<Thumb>(&serde_json::json!({"id": 7})),
            Err(Error::Format {
                codec: "msgpack",
                ..
            })
        ));
        Ok(())
    }
}
