{{/*
The extauthz container and its volumes: one definition for the chart's own
Deployment or StatefulSet and for the sidecar an app's chart includes.
*/}}

{{/* With a client CA the kubelet, which has no client certificate, can only connect. */}}
{{- define "extauthz.probe" -}}
{{- if and .Values.tls.enabled .Values.tls.clientCA.enabled -}}
tcpSocket: {port: http}
{{- else -}}
httpGet: {path: {{ .path }}, port: http, scheme: {{ ternary "HTTPS" "HTTP" .Values.tls.enabled }}}
{{- end -}}
{{- end -}}

{{/* The extauthz container, as one item of a containers or initContainers list. */}}
{{- define "extauthz.container" -}}
- name: extauthz
  image: {{ include "extauthz.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.sidecar.enabled }}
  # A native sidecar (an init container that keeps running): it is up before
  # the containers after it start, and outlives them on shutdown.
  restartPolicy: Always
  {{- end }}
  args: ["serve", "--config", {{ include "extauthz.configFile" . | quote }}]
  env:
  # The CLI in the Pod (kubectl exec ... /extauthz keys ...) reads the same file.
  - name: EXTAUTHZ_CONFIG
    value: {{ include "extauthz.configFile" . | quote }}
  # The Go heap's soft cap, below the memory limit.
  - name: GOMEMLIMIT
    value: {{ include "extauthz.goMemLimit" . | quote }}
  # Required: no pepper, no start.
  - name: EXTAUTHZ_PEPPER
    valueFrom:
      secretKeyRef:
        name: {{ include "extauthz.pepper.secretName" . }}
        key: {{ .Values.pepper.key }}
  {{- if eq .Values.store.backend "redis" }}
  # Required: Redis lets no one in without it.
  - name: REDIS_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "extauthz.redis.secretName" . }}
        key: {{ .Values.store.redis.password.key }}
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  ports:
  {{- if not .Values.sidecar.enabled }}
  - name: grpc
    containerPort: {{ .Values.listen.grpc }}
  {{- end }}
  - name: http
    containerPort: {{ .Values.listen.http }}
  # The admin API listens on loopback (or not at all) and is not listed.
  startupProbe:
    {{- if or .Values.tls.enabled .Values.sidecar.enabled }}
    {{- include "extauthz.probe" (merge (dict "path" "/healthz") .) | nindent 4 }}
    {{- else }}
    # Started means the Check service itself answers (grpc.health.v1), not only
    # the HTTP listener. The kubelet's gRPC probes speak neither TLS nor
    # loopback, hence /healthz with TLS or as a sidecar.
    grpc: {port: {{ .Values.listen.grpc }}, service: envoy.service.auth.v3.Authorization}
    {{- end }}
    periodSeconds: 2
    failureThreshold: 30
  # See readinessFailureThreshold in values.yaml: a Redis outage fails every
  # replica's /readyz at once.
  readinessProbe:
    {{- include "extauthz.probe" (merge (dict "path" "/readyz") .) | nindent 4 }}
    periodSeconds: 5
    failureThreshold: {{ .Values.readinessFailureThreshold }}
  livenessProbe:
    {{- include "extauthz.probe" (merge (dict "path" "/healthz") .) | nindent 4 }}
    periodSeconds: 10
    failureThreshold: 3
  {{- if not .Values.sidecar.enabled }}
  lifecycle:
    # Keep serving while the endpoint removal reaches every proxy; the image
    # has no shell, so the kubelet sleeps.
    preStop:
      sleep: {seconds: 5}
  {{- end }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
  - name: extauthz-config
    mountPath: {{ dir (include "extauthz.configFile" .) }}
    readOnly: true
  - name: extauthz-tmp
    mountPath: /tmp
  {{- if .Values.tls.enabled }}
  # Whole Secret volumes (no subPath), so renewals reach the files.
  - name: extauthz-tls
    mountPath: {{ include "extauthz.tlsDir" . }}
    readOnly: true
  {{- if .Values.tls.clientCA.enabled }}
  - name: extauthz-client-ca
    mountPath: {{ include "extauthz.clientCADir" . }}
    readOnly: true
  {{- end }}
  {{- end }}
  {{- if eq .Values.store.backend "embedded" }}
  - name: data
    mountPath: {{ include "extauthz.embeddedDir" . }}
  {{- end }}
{{- end -}}

{{/* The volumes the extauthz container mounts, as list items. */}}
{{- define "extauthz.volumes" -}}
- name: extauthz-config
  configMap:
    name: {{ include "extauthz.fullname" . }}
- name: extauthz-tmp
  emptyDir: {sizeLimit: 16Mi}
{{- if .Values.tls.enabled }}
- name: extauthz-tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
    {{- if not .extauthzSidecar }}
    # Owner read only; the Pod's fsGroup adds group read: the key is no
    # file every user of the container may read. Not in an app's Pod
    # (sidecar), whose fsGroup the chart does not set: there the files
    # would stay root's, and extauthz could not read its key.
    defaultMode: 0400
    {{- end }}
    items:
    - {key: tls.crt, path: tls.crt}
    - {key: tls.key, path: tls.key}
{{- if .Values.tls.clientCA.enabled }}
- name: extauthz-client-ca
  secret:
    secretName: {{ default .Values.tls.existingSecret .Values.tls.clientCA.existingSecret }}
    items:
    - {key: {{ .Values.tls.clientCA.key }}, path: {{ .Values.tls.clientCA.key }}}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod annotations that roll the Pods when their config changes. */}}
{{- define "extauthz.podAnnotations" -}}
checksum/config: {{ include "extauthz.config" . | sha256sum }}
{{- end -}}

{{/* The Pod template of the chart's own extauthz Deployment or StatefulSet. */}}
{{- define "extauthz.podTemplate" -}}
metadata:
  labels:
    {{- include "extauthz.podLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- include "extauthz.podAnnotations" . | nindent 4 }}
    {{- if .Values.metrics.podAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ .Values.listen.http | quote }}
    prometheus.io/path: /metrics
    prometheus.io/scheme: {{ ternary "https" "http" .Values.tls.enabled }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "extauthz.serviceAccountName" . }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    # The embedded store's volume is written by this group.
    fsGroup: 65532
    fsGroupChangePolicy: OnRootMismatch
    seccompProfile:
      type: RuntimeDefault
  {{- if or .Values.spreadOverNodes .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
  {{- if .Values.spreadOverNodes }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "extauthz.selectorLabels" . | nindent 8 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
  {{- include "extauthz.container" . | nindent 2 }}
  volumes:
  {{- include "extauthz.volumes" . | nindent 2 }}
{{- end -}}
