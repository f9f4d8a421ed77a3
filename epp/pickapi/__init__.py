"""The Pick API (``epp.v1.EndpointPicker``): routing for callers that are not Envoy."""
