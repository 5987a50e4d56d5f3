"""JSON documents: paths, flattening to columns, the header pass's key collection and the
merge of headers (`flatten`)."""
