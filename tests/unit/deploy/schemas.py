"""Small JSON schemas for the custom resources in deploy/, covering what epp and the
gateways read from them (the Kubernetes OpenAPI schemas cover only the built-in kinds).

Each follows the resource's published CRD (Gateway API Inference Extension v1.0-v1.5, and
v0.3-v0.5 for InferenceModel; Gateway API v1, Envoy Gateway v1.6, Istio's API reference,
Prometheus Operator), leaving out the CEL rules, and is narrowed where deploy/ makes a
choice the gateways depend on: an ext_proc filter for epp must use the processing modes epp
is built for.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CRD_SCHEMAS", "EXT_PROC_FILTER", "ROUTING_STRATEGY_ANNOTATION"]

Schema = dict[str, Any]

ROUTING_STRATEGY_ANNOTATION = "inference.networking.x-k8s.io/routing-strategy"

_PORT: Schema = {"type": "integer", "minimum": 1, "maximum": 65535}
_NAME: Schema = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
_LABEL_VALUE: Schema = {
    "type": "string",
    "maxLength": 63,
    "pattern": r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
}
_LABELS: Schema = {"type": "object", "additionalProperties": _LABEL_VALUE}
_GO_DURATION: Schema = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"}
_GATEWAY_DURATION: Schema = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}
_GIE_GROUPS = ["inference.networking.k8s.io", "inference.networking.x-k8s.io"]


def _resource(
    spec: Schema, *, spec_required: bool = True, annotations: Schema | None = None
) -> Schema:
    metadata: Schema = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": _NAME,
            "namespace": _NAME,
            "labels": _LABELS,
            "annotations": annotations or {"type": "object"},
        },
    }
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"] + (["spec"] if spec_required else []),
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": metadata,
            "spec": spec,
            "status": {"type": "object"},
        },
        "additionalProperties": False,
    }


_POOL_ANNOTATIONS: Schema = {
    "type": "object",
    "properties": {ROUTING_STRATEGY_ANNOTATION: {"enum": ["DEFAULT", "PREFIX_CACHE"]}},
}

INFERENCE_POOL_V1 = _resource(
    {
        "type": "object",
        "required": ["selector", "targetPorts", "endpointPickerRef"],
        "additionalProperties": False,
        "properties": {
            "selector": {
                "type": "object",
                "required": ["matchLabels"],
                "additionalProperties": False,
                "properties": {"matchLabels": {**_LABELS, "minProperties": 1, "maxProperties": 64}},
            },
            "targetPorts": {
                "type": "array",
                "minItems": 1,
                "maxItems": 8,
                "items": {
                    "type": "object",
                    "required": ["number"],
                    "additionalProperties": False,
                    "properties": {"number": _PORT},
                },
            },
            "appProtocol": {"enum": ["http", "kubernetes.io/h2c"]},
            "endpointPickerRef": {
                "type": "object",
                # port is optional in the CRD only for kinds other than Service.
                "required": ["name", "port"],
                "additionalProperties": False,
                "properties": {
                    "group": {"const": ""},
                    "kind": {"const": "Service"},
                    "name": _NAME,
                    "port": {
                        "type": "object",
                        "required": ["number"],
                        "additionalProperties": False,
                        "properties": {"number": _PORT},
                    },
                    "failureMode": {"enum": ["FailOpen", "FailClose"]},
                },
            },
        },
    },
    annotations=_POOL_ANNOTATIONS,
)

INFERENCE_POOL_V1ALPHA2 = _resource(
    {
        "type": "object",
        "required": ["selector", "targetPortNumber", "extensionRef"],
        "additionalProperties": False,
        "properties": {
            "selector": {**_LABELS, "minProperties": 1},
            "targetPortNumber": _PORT,
            "extensionRef": {
                "type": "object",
                "required": ["name", "portNumber"],
                "additionalProperties": False,
                "properties": {
                    "group": {"const": ""},
                    "kind": {"const": "Service"},
                    "name": _NAME,
                    "portNumber": _PORT,
                    "failureMode": {"enum": ["FailOpen", "FailClose"]},
                },
            },
        },
    },
    annotations=_POOL_ANNOTATIONS,
)

_POOL_REF: Schema = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "group": {"enum": _GIE_GROUPS},
        "kind": {"const": "InferencePool"},
        "name": _NAME,
    },
}

INFERENCE_OBJECTIVE = _resource(
    {
        "type": "object",
        "required": ["poolRef"],
        "additionalProperties": False,
        "properties": {"poolRef": _POOL_REF, "priority": {"type": "integer"}},
    }
)

INFERENCE_MODEL_REWRITE = _resource(
    {
        "type": "object",
        "required": ["poolRef", "rules"],
        "additionalProperties": False,
        "properties": {
            "poolRef": _POOL_REF,
            "rules": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["targets"],
                    "additionalProperties": False,
                    "properties": {
                        "matches": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["model"],
                                "additionalProperties": False,
                                "properties": {
                                    "model": {
                                        "type": "object",
                                        "required": ["value"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "type": {"const": "Exact"},
                                            "value": {"type": "string", "minLength": 1},
                                        },
                                    }
                                },
                            },
                        },
                        "targets": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["modelRewrite"],
                                "additionalProperties": False,
                                "properties": {
                                    "modelRewrite": {"type": "string", "minLength": 1},
                                    "weight": {"type": "integer", "minimum": 1, "maximum": 1000000},
                                },
                            },
                        },
                    },
                },
            },
        },
    }
)

# GIE v0.3-v0.5 api/v1alpha2/inferencemodel_types.go; its poolRef group defaults to the
# older group, where the kind lives.
INFERENCE_MODEL = _resource(
    {
        "type": "object",
        "required": ["modelName", "poolRef"],
        "additionalProperties": False,
        "properties": {
            "modelName": {"type": "string", "minLength": 1, "maxLength": 256},
            "criticality": {"enum": ["Critical", "Standard", "Sheddable"]},
            "poolRef": _POOL_REF,
            "targetModels": {
                "type": "array",
                "maxItems": 10,
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 253},
                        "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
                    },
                },
            },
        },
    }
)

_PARENT_REF: Schema = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "group": {"type": "string"},
        "kind": {"type": "string"},
        "name": _NAME,
        "namespace": _NAME,
        "sectionName": _NAME,
        "port": _PORT,
    },
}

_BACKEND_REF: Schema = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "group": {"type": "string"},
        "kind": {"type": "string"},
        "name": _NAME,
        "namespace": _NAME,
        "port": _PORT,
        "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
    },
    # A route to an InferencePool must say so in full: the default kind is Service.
    "if": {"required": ["kind"], "properties": {"kind": {"const": "InferencePool"}}},
    "then": {"required": ["group", "kind", "name"], "properties": {"group": {"enum": _GIE_GROUPS}}},
    "else": {"required": ["port"]},
}

HTTP_ROUTE = _resource(
    {
        "type": "object",
        "required": ["parentRefs", "rules"],
        "additionalProperties": False,
        "properties": {
            "parentRefs": {"type": "array", "minItems": 1, "items": _PARENT_REF},
            "hostnames": {"type": "array", "items": {"type": "string"}},
            "rules": {
                "type": "array",
                "minItems": 1,
                "maxItems": 16,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "name": _NAME,
                        "matches": {
                            "type": "array",
                            "maxItems": 64,
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "path": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {
                                            "type": {
                                                "enum": ["Exact", "PathPrefix", "RegularExpression"]
                                            },
                                            "value": {"type": "string", "pattern": "^/"},
                                        },
                                    },
                                    "headers": {
                                        "type": "array",
                                        "maxItems": 16,
                                        "items": {
                                            "type": "object",
                                            "required": ["name", "value"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "type": {"enum": ["Exact", "RegularExpression"]},
                                                "name": {
                                                    "type": "string",
                                                    "pattern": r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$",
                                                },
                                                "value": {
                                                    "type": "string",
                                                    "minLength": 1,
                                                    "maxLength": 4096,
                                                },
                                            },
                                        },
                                    },
                                    "method": {"type": "string"},
                                    "queryParams": {"type": "array"},
                                },
                            },
                        },
                        "backendRefs": {"type": "array", "minItems": 1, "items": _BACKEND_REF},
                        "filters": {"type": "array"},
                        "timeouts": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "request": _GATEWAY_DURATION,
                                "backendRequest": _GATEWAY_DURATION,
                            },
                        },
                    },
                },
            },
        },
    }
)

GATEWAY = _resource(
    {
        "type": "object",
        "required": ["gatewayClassName", "listeners"],
        "properties": {
            "gatewayClassName": _NAME,
            "listeners": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "port", "protocol"],
                    "properties": {
                        "name": _NAME,
                        "port": _PORT,
                        "protocol": {"enum": ["HTTP", "HTTPS", "TLS", "TCP", "UDP"]},
                    },
                },
            },
        },
    }
)

GATEWAY_CLASS = _resource(
    {
        "type": "object",
        "required": ["controllerName"],
        "properties": {"controllerName": {"type": "string", "pattern": r"^[a-z0-9.-]+/[^/]+$"}},
    }
)

_TARGET_REFS: Schema = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["group", "kind", "name"],
        "additionalProperties": False,
        "properties": {
            "group": {"type": "string"},
            "kind": {"type": "string"},
            "name": _NAME,
            "sectionName": _NAME,
        },
    },
}

# The ext_proc filter in front of epp (Envoy's proto JSON names, as deploy/ writes them).
EXT_PROC_FILTER: Schema = {
    "type": "object",
    "required": ["name", "typed_config"],
    "properties": {
        "name": {"type": "string", "pattern": r"^envoy\.filters\.http\.ext_proc"},
        "typed_config": {
            "type": "object",
            "required": [
                "@type",
                "grpc_service",
                "processing_mode",
                "failure_mode_allow",
                "allow_mode_override",
                "message_timeout",
            ],
            "properties": {
                "@type": {
                    "const": "type.googleapis.com/envoy.extensions.filters.http.ext_proc"
                    ".v3.ExternalProcessor"
                },
                "grpc_service": {
                    "type": "object",
                    "required": ["envoy_grpc"],
                    "properties": {
                        "envoy_grpc": {
                            "type": "object",
                            "required": ["cluster_name"],
                            "additionalProperties": False,
                            "properties": {
                                "cluster_name": {"type": "string"},
                                "authority": {"type": "string"},
                            },
                        },
                        "timeout": _GO_DURATION,
                    },
                },
                "processing_mode": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "request_header_mode",
                        "request_body_mode",
                        "request_trailer_mode",
                        "response_header_mode",
                        "response_body_mode",
                        "response_trailer_mode",
                    ],
                    "properties": {
                        "request_header_mode": {"const": "SEND"},
                        "request_body_mode": {"const": "FULL_DUPLEX_STREAMED"},
                        "request_trailer_mode": {"const": "SEND"},
                        "response_header_mode": {"const": "SEND"},
                        "response_body_mode": {"const": "FULL_DUPLEX_STREAMED"},
                        "response_trailer_mode": {"const": "SEND"},
                    },
                },
                # Full duplex streaming cannot fail open; the modes above are fixed.
                "failure_mode_allow": {"const": False},
                "allow_mode_override": {"const": False},
                "message_timeout": _GO_DURATION,
            },
        },
    },
}

ENVOY_FILTER = _resource(
    {
        "type": "object",
        "required": ["configPatches"],
        "additionalProperties": False,
        "properties": {
            "targetRefs": _TARGET_REFS,
            "workloadSelector": {"type": "object"},
            "priority": {"type": "integer"},
            "configPatches": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["applyTo", "patch"],
                    "additionalProperties": False,
                    "properties": {
                        "applyTo": {
                            "enum": [
                                "LISTENER",
                                "FILTER_CHAIN",
                                "NETWORK_FILTER",
                                "HTTP_FILTER",
                                "ROUTE_CONFIGURATION",
                                "VIRTUAL_HOST",
                                "HTTP_ROUTE",
                                "CLUSTER",
                                "EXTENSION_CONFIG",
                                "BOOTSTRAP",
                                "LISTENER_FILTER",
                            ]
                        },
                        "match": {
                            "type": "object",
                            "properties": {
                                "context": {
                                    "enum": [
                                        "ANY",
                                        "SIDECAR_INBOUND",
                                        "SIDECAR_OUTBOUND",
                                        "GATEWAY",
                                    ]
                                },
                                "listener": {"type": "object"},
                            },
                        },
                        "patch": {
                            "type": "object",
                            "required": ["operation", "value"],
                            "properties": {
                                "operation": {
                                    "enum": [
                                        "MERGE",
                                        "ADD",
                                        "REMOVE",
                                        "INSERT_BEFORE",
                                        "INSERT_AFTER",
                                        "INSERT_FIRST",
                                        "REPLACE",
                                    ]
                                },
                                "value": {
                                    "type": "object",
                                    "if": {
                                        "required": ["name"],
                                        "properties": {
                                            "name": {"pattern": r"^envoy\.filters\.http\.ext_proc"}
                                        },
                                    },
                                    "then": EXT_PROC_FILTER,
                                },
                            },
                        },
                    },
                },
            },
        },
    }
)

DESTINATION_RULE = _resource(
    {
        "type": "object",
        "required": ["host"],
        "properties": {
            "host": {"type": "string", "minLength": 1},
            "trafficPolicy": {
                "type": "object",
                "properties": {
                    "tls": {
                        "type": "object",
                        "required": ["mode"],
                        "additionalProperties": False,
                        "properties": {
                            "mode": {"enum": ["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]},
                            "insecureSkipVerify": {"type": "boolean"},
                            "sni": {"type": "string"},
                        },
                    }
                },
            },
        },
    }
)

_BODY_MODE: Schema = {"enum": ["Streamed", "Buffered", "BufferedPartial", "FullDuplexStreamed"]}
_MODE_OPTIONS: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "body": _BODY_MODE,
        "attributes": {"type": "array", "items": {"type": "string"}},
    },
}

_FULL_DUPLEX: Schema = {
    "required": ["body"],
    "properties": {"body": {"const": "FullDuplexStreamed"}},
}

ENVOY_EXTENSION_POLICY = _resource(
    {
        "type": "object",
        "required": ["targetRefs"],
        "additionalProperties": False,
        "properties": {
            "targetRefs": _TARGET_REFS,
            "extProc": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["backendRefs"],
                    "additionalProperties": False,
                    "properties": {
                        "backendRefs": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["name", "port"],
                                "additionalProperties": False,
                                "properties": {
                                    "group": {
                                        "enum": [
                                            "",
                                            "gateway.envoyproxy.io",
                                            "multicluster.x-k8s.io",
                                        ]
                                    },
                                    "kind": {"enum": ["Service", "Backend", "ServiceImport"]},
                                    "name": _NAME,
                                    "namespace": _NAME,
                                    "port": _PORT,
                                },
                            },
                        },
                        "backendSettings": {"type": "object"},
                        "processingMode": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "request": _MODE_OPTIONS,
                                "response": _MODE_OPTIONS,
                                "allowModeOverride": {"type": "boolean"},
                            },
                        },
                        "messageTimeout": _GATEWAY_DURATION,
                        "failOpen": {"type": "boolean"},
                        "metadata": {"type": "object"},
                    },
                    # Envoy Gateway's rule: FullDuplexStreamed needs failOpen false.
                    "if": {
                        "properties": {
                            "processingMode": {
                                "anyOf": [
                                    {"required": [way], "properties": {way: _FULL_DUPLEX}}
                                    for way in ("request", "response")
                                ]
                            }
                        },
                        "required": ["processingMode"],
                    },
                    "then": {"properties": {"failOpen": {"const": False}}},
                },
            },
        },
    }
)

SERVICE_MONITOR = _resource(
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": {
                "type": "object",
                "required": ["matchLabels"],
                "properties": {"matchLabels": {**_LABELS, "minProperties": 1}},
            },
            "namespaceSelector": {
                "type": "object",
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": _NAME},
                },
            },
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["port"],
                    "properties": {
                        "port": _NAME,
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": _GATEWAY_DURATION,
                        "scheme": {"enum": ["http", "https"]},
                    },
                },
            },
        },
    }
)

POD_MONITOR = _resource(
    {
        "type": "object",
        "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            "selector": {
                "type": "object",
                "properties": {
                    "matchLabels": _LABELS,
                    "matchExpressions": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["key", "operator"],
                            "properties": {
                                "key": {"type": "string"},
                                "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                "values": {"type": "array", "items": _LABEL_VALUE},
                            },
                        },
                    },
                },
            },
            "podMetricsEndpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "port": _NAME,
                        "portNumber": _PORT,
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": _GATEWAY_DURATION,
                        "scheme": {"enum": ["http", "https"]},
                    },
                },
            },
        },
    }
)

# (apiVersion, kind) -> schema
CRD_SCHEMAS: dict[tuple[str, str], Schema] = {
    ("inference.networking.k8s.io/v1", "InferencePool"): INFERENCE_POOL_V1,
    ("inference.networking.x-k8s.io/v1alpha2", "InferencePool"): INFERENCE_POOL_V1ALPHA2,
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective"): INFERENCE_OBJECTIVE,
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceModelRewrite"): INFERENCE_MODEL_REWRITE,
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceModel"): INFERENCE_MODEL,
    # llm-d-router v0.10's CRDs: the same two kinds, moved to llm-d.ai.
    ("llm-d.ai/v1alpha2", "InferenceObjective"): INFERENCE_OBJECTIVE,
    ("llm-d.ai/v1alpha2", "InferenceModelRewrite"): INFERENCE_MODEL_REWRITE,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTP_ROUTE,
    ("gateway.networking.k8s.io/v1", "Gateway"): GATEWAY,
    ("gateway.networking.k8s.io/v1", "GatewayClass"): GATEWAY_CLASS,
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): ENVOY_FILTER,
    ("networking.istio.io/v1", "DestinationRule"): DESTINATION_RULE,
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"): ENVOY_EXTENSION_POLICY,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
}
