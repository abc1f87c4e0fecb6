{{/*
extauthz as a sidecar in your app's Pods (sidecar.enabled). Add this chart as a
dependency of your app's chart, set extauthz.sidecar.enabled: true in its
values, and include these in the app's Pod template, passing this chart's
context:

  template:
    metadata:
      labels:
        {{- include "extauthz.sidecar.podLabels" .Subcharts.extauthz | nindent 8 }}
      annotations:
        {{- include "extauthz.sidecar.podAnnotations" .Subcharts.extauthz | nindent 8 }}
    spec:
      automountServiceAccountToken: false
      # extauthz stops last, after the app and Envoy, and its own stop takes
      # up to about 30 s (audit events among the last things written).
      terminationGracePeriodSeconds: 40
      initContainers:
        {{- include "extauthz.sidecar.container" .Subcharts.extauthz | nindent 8 }}
        # then your Envoy, as a native sidecar too (restartPolicy: Always),
        # sending ext_authz to 127.0.0.1:<listen.grpc>
      containers: [your app]
      volumes:
        {{- include "extauthz.sidecar.volumes" .Subcharts.extauthz | nindent 8 }}

Keep the app container away from the Redis password: no env var, envFrom or
volume of that Secret, no shareProcessNamespace. The Redis NetworkPolicy admits
the Pod (podLabels), not a container: the password is what keeps the app out.

Add a NetworkPolicy for the app's Pods that admits your Envoy's port and no
other: the app listens on the Pod's address too, and a request to its own
port skips authorization; extauthz's HTTP listener is on the Pod's address
(the kubelet probes it there) and answers HTTP-mode decisions and /metrics to
any caller. This chart renders no policy for Pods that are your app's.

  kind: NetworkPolicy
  spec:
    podSelector: {matchLabels: <your app's Pod labels>}
    policyTypes: [Ingress]
    ingress:
    - ports: [{port: <Envoy's listener port>, protocol: TCP}]
*/}}

{{- define "extauthz.sidecar.container" -}}
{{- include "extauthz.sidecar.check" . -}}
{{- include "extauthz.container" . -}}
{{- end -}}

{{- define "extauthz.sidecar.volumes" -}}
{{- include "extauthz.sidecar.check" . -}}
{{- include "extauthz.volumes" (merge (dict "extauthzSidecar" true) .) -}}
{{- end -}}

{{/* Only the label the Redis NetworkPolicy admits by: the Pod is your app's. */}}
{{- define "extauthz.sidecar.podLabels" -}}
{{- include "extauthz.sidecar.check" . -}}
extauthz/redis-client: "true"
{{- end -}}

{{- define "extauthz.sidecar.podAnnotations" -}}
{{- include "extauthz.sidecar.check" . -}}
{{- include "extauthz.podAnnotations" . -}}
{{- end -}}

{{- define "extauthz.sidecar.check" -}}
{{- if not .Values.sidecar.enabled -}}
{{- fail "extauthz.sidecar.* templates need sidecar.enabled: true in the extauthz chart's values (its config binds gRPC to loopback and turns the admin API off)" -}}
{{- end -}}
{{- end -}}
