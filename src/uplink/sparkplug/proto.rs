//! The Sparkplug B payload: Eclipse Tahu's `sparkplug_b.proto` (package
//! `org.eclipse.tahu.protobuf`, proto2) as prost messages, written by hand so that no `protoc`
//! is needed at build time. Field numbers, types, `optional`/`repeated` and oneofs mirror the
//! `.proto` one for one; the `*Extension` messages stand for the proto's `extensions N to max`
//! (prost has no extensions: unknown fields are skipped on decode, which is what a
//! proto2 reader without the extension does too).
//!
//! `DataType` is the proto's enum; fields that hold one (`Metric.datatype`,
//! `PropertyValue.type`, `DataSet.types`, `Template.Parameter.type`) are `uint32` in the
//! proto, so they are `u32` here too.

/// `org.eclipse.tahu.protobuf.DataType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    Unknown = 0,
    Int8 = 1,
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    UInt8 = 5,
    UInt16 = 6,
    UInt32 = 7,
    UInt64 = 8,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
    DateTime = 13,
    Text = 14,
    Uuid = 15,
    DataSet = 16,
    Bytes = 17,
    File = 18,
    Template = 19,
    PropertySet = 20,
    PropertySetList = 21,
    Int8Array = 22,
    Int16Array = 23,
    Int32Array = 24,
    Int64Array = 25,
    UInt8Array = 26,
    UInt16Array = 27,
    UInt32Array = 28,
    UInt64Array = 29,
    FloatArray = 30,
    DoubleArray = 31,
    BooleanArray = 32,
    StringArray = 33,
    DateTimeArray = 34,
}

/// `Payload`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Template`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Template {
    #[prost(string, optional, tag = "1")]
    pub version: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    #[prost(message, repeated, tag = "3")]
    pub parameters: Vec<Parameter>,
    #[prost(string, optional, tag = "4")]
    pub template_ref: Option<String>,
    #[prost(bool, optional, tag = "5")]
    pub is_definition: Option<bool>,
}

/// `Payload.Template.Parameter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Parameter {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint32, optional, tag = "2")]
    pub r#type: Option<u32>,
    #[prost(oneof = "ParameterValue", tags = "3, 4, 5, 6, 7, 8, 9")]
    pub value: Option<ParameterValue>,
}

/// `Payload.Template.Parameter.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ParameterValue {
    #[prost(uint32, tag = "3")]
    IntValue(u32),
    #[prost(uint64, tag = "4")]
    LongValue(u64),
    #[prost(float, tag = "5")]
    FloatValue(f32),
    #[prost(double, tag = "6")]
    DoubleValue(f64),
    #[prost(bool, tag = "7")]
    BooleanValue(bool),
    #[prost(string, tag = "8")]
    StringValue(String),
    #[prost(message, tag = "9")]
    ExtensionValue(Extension),
}

/// Any of the proto's `*ValueExtension` messages: only `extensions 1 to max`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Extension {}

/// `Payload.DataSet`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DataSet {
    #[prost(uint64, optional, tag = "1")]
    pub num_of_columns: Option<u64>,
    #[prost(string, repeated, tag = "2")]
    pub columns: Vec<String>,
    #[prost(uint32, repeated, packed = "false", tag = "3")]
    pub types: Vec<u32>,
    #[prost(message, repeated, tag = "4")]
    pub rows: Vec<Row>,
}

/// `Payload.DataSet.Row`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Row {
    #[prost(message, repeated, tag = "1")]
    pub elements: Vec<DataSetValue>,
}

/// `Payload.DataSet.DataSetValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DataSetValue {
    #[prost(oneof = "DataSetValueKind", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<DataSetValueKind>,
}

/// `Payload.DataSet.DataSetValue.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DataSetValueKind {
    #[prost(uint32, tag = "1")]
    IntValue(u32),
    #[prost(uint64, tag = "2")]
    LongValue(u64),
    #[prost(float, tag = "3")]
    FloatValue(f32),
    #[prost(double, tag = "4")]
    DoubleValue(f64),
    #[prost(bool, tag = "5")]
    BooleanValue(bool),
    #[prost(string, tag = "6")]
    StringValue(String),
    #[prost(message, tag = "7")]
    ExtensionValue(Extension),
}

/// `Payload.PropertyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    #[prost(oneof = "PropertyValueKind", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub value: Option<PropertyValueKind>,
}

/// `Payload.PropertyValue.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyValueKind {
    #[prost(uint32, tag = "3")]
    IntValue(u32),
    #[prost(uint64, tag = "4")]
    LongValue(u64),
    #[prost(float, tag = "5")]
    FloatValue(f32),
    #[prost(double, tag = "6")]
    DoubleValue(f64),
    #[prost(bool, tag = "7")]
    BooleanValue(bool),
    #[prost(string, tag = "8")]
    StringValue(String),
    #[prost(message, tag = "9")]
    PropertysetValue(PropertySet),
    #[prost(message, tag = "10")]
    PropertysetsValue(PropertySetList),
    #[prost(message, tag = "11")]
    ExtensionValue(Extension),
}

/// `Payload.PropertySet`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

/// `Payload.PropertySetList`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySetList {
    #[prost(message, repeated, tag = "1")]
    pub propertyset: Vec<PropertySet>,
}

/// `Payload.MetaData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaData {
    #[prost(bool, optional, tag = "1")]
    pub is_multi_part: Option<bool>,
    #[prost(string, optional, tag = "2")]
    pub content_type: Option<String>,
    #[prost(uint64, optional, tag = "3")]
    pub size: Option<u64>,
    #[prost(uint64, optional, tag = "4")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "5")]
    pub file_name: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub file_type: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub md5: Option<String>,
    #[prost(string, optional, tag = "8")]
    pub description: Option<String>,
}

/// `Payload.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(message, optional, tag = "8")]
    pub metadata: Option<MetaData>,
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19")]
    pub value: Option<MetricValue>,
}

/// `Payload.Metric.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    #[prost(string, tag = "15")]
    StringValue(String),
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
    #[prost(message, tag = "17")]
    DatasetValue(DataSet),
    #[prost(message, tag = "18")]
    TemplateValue(Template),
    #[prost(message, tag = "19")]
    ExtensionValue(Extension),
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn metric(name: &str, value: MetricValue, datatype: DataType) -> Metric {
        Metric {
            name: Some(name.into()),
            alias: Some(7),
            timestamp: Some(1_732_272_000_123),
            datatype: Some(datatype as u32),
            value: Some(value),
            ..Default::default()
        }
    }

    #[test]
    fn every_value_kind_round_trips() {
        let props = PropertySet {
            keys: vec!["engUnit".into(), "Quality".into()],
            values: vec![
                PropertyValue {
                    r#type: Some(DataType::String as u32),
                    is_null: None,
                    value: Some(PropertyValueKind::StringValue("°C".into())),
                },
                PropertyValue {
                    r#type: Some(DataType::Int32 as u32),
                    is_null: None,
                    value: Some(PropertyValueKind::IntValue(192)),
                },
            ],
        };
        let p = Payload {
            timestamp: Some(1),
            seq: Some(255),
            uuid: Some("u".into()),
            body: Some(vec![1, 2, 3]),
            metrics: vec![
                metric("i", MetricValue::IntValue(u32::MAX), DataType::UInt32),
                metric("l", MetricValue::LongValue(u64::MAX), DataType::UInt64),
                metric("f", MetricValue::FloatValue(1.5), DataType::Float),
                metric("d", MetricValue::DoubleValue(-2.25), DataType::Double),
                metric("b", MetricValue::BooleanValue(true), DataType::Boolean),
                metric("s", MetricValue::StringValue("x".into()), DataType::String),
                metric("y", MetricValue::BytesValue(vec![0, 255]), DataType::Bytes),
                metric(
                    "ds",
                    MetricValue::DatasetValue(DataSet {
                        num_of_columns: Some(1),
                        columns: vec!["c".into()],
                        types: vec![DataType::Int32 as u32],
                        rows: vec![Row {
                            elements: vec![DataSetValue {
                                value: Some(DataSetValueKind::IntValue(3)),
                            }],
                        }],
                    }),
                    DataType::DataSet,
                ),
                metric(
                    "t",
                    MetricValue::TemplateValue(Template {
                        version: Some("1".into()),
                        metrics: vec![],
                        parameters: vec![Parameter {
                            name: Some("p".into()),
                            r#type: Some(DataType::Boolean as u32),
                            value: Some(ParameterValue::BooleanValue(false)),
                        }],
                        template_ref: None,
                        is_definition: Some(true),
                    }),
                    DataType::Template,
                ),
                Metric {
                    name: Some("null".into()),
                    is_null: Some(true),
                    is_historical: Some(true),
                    properties: Some(props),
                    ..Default::default()
                },
            ],
        };
        let bytes = p.encode_to_vec();
        assert_eq!(Payload::decode(bytes.as_slice()).unwrap(), p);
    }

    /// Bytes written by hand from the proto's wire format, so the tags are checked against
    /// the `.proto`, not only against themselves: timestamp (1) = 5, metric (2) { name (1) =
    /// "a", alias (2) = 1, datatype (4) = 11 (Boolean), is_historical (5) = true,
    /// boolean_value (14) = true }, seq (3) = 2.
    #[test]
    fn wire_tags_match_tahus_proto() {
        let metric: Vec<u8> = vec![
            0x0a, 1, b'a', // name
            0x10, 1, // alias
            0x20, 11, // datatype
            0x28, 1, // is_historical
            0x70, 1, // boolean_value (14 << 3 | 0)
        ];
        let mut wire = vec![0x08, 5, 0x12, metric.len() as u8];
        wire.extend(&metric);
        wire.extend([0x18, 2]);
        let p = Payload::decode(wire.as_slice()).unwrap();
        assert_eq!(p.timestamp, Some(5));
        assert_eq!(p.seq, Some(2));
        let m = &p.metrics[0];
        assert_eq!(m.name.as_deref(), Some("a"));
        assert_eq!(m.alias, Some(1));
        assert_eq!(m.datatype, Some(DataType::Boolean as u32));
        assert_eq!(m.is_historical, Some(true));
        assert_eq!(m.value, Some(MetricValue::BooleanValue(true)));
        assert_eq!(p.encode_to_vec(), wire);
    }
}
