package deploytest

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// The kubelet writes a Secret volume's files owned by root, and by the
// Pod's fsGroup (group read added) only when the Pod sets one. The chart's
// own Pod sets fsGroup 65532 and mounts the TLS Secret with defaultMode
// 0400 (0440 then: no other user reads the key); an app's Pod that runs
// extauthz as a sidecar is the app's, and the sidecar app of testdata sets
// no fsGroup: with 0400 there tls.key was root:root 0400, which extauthz
// (uid 65532, gid 65532) cannot open, so serve failed at start with TLS on.
func TestTheSidecarCanReadItsTLSKey(t *testing.T) {
	m, _ := renderSidecarApp(t, `extauthz: {tls: {enabled: true, existingSecret: shop-tls}}`)
	checked := 0
	for _, w := range m.workloads() {
		spec := &w.pod.Spec
		for i := range spec.InitContainers {
			c := &spec.InitContainers[i]
			if !isExtauthz(c) {
				continue
			}
			var vol *corev1.Volume
			for _, vm := range c.VolumeMounts {
				if vm.MountPath != "/etc/extauthz-tls" {
					continue
				}
				for j := range spec.Volumes {
					if spec.Volumes[j].Name == vm.Name {
						vol = &spec.Volumes[j]
					}
				}
			}
			if vol == nil || vol.Secret == nil {
				t.Fatalf("%s/%s: no TLS Secret volume mounted at /etc/extauthz-tls", w.kind, w.name)
			}
			mode := int32(0o644) // Kubernetes' default
			if vol.Secret.DefaultMode != nil {
				mode = *vol.Secret.DefaultMode
			}
			for _, it := range vol.Secret.Items {
				if it.Path == "tls.key" && it.Mode != nil {
					mode = *it.Mode
				}
			}
			var uid, gid int64 = -1, -1
			var groups []int64
			if sc := spec.SecurityContext; sc != nil {
				uid, gid = ptrOr(sc.RunAsUser, uid), ptrOr(sc.RunAsGroup, gid)
				groups = append(groups, sc.SupplementalGroups...)
			}
			if sc := c.SecurityContext; sc != nil {
				uid, gid = ptrOr(sc.RunAsUser, uid), ptrOr(sc.RunAsGroup, gid)
			}
			// File owner root; group the Pod's fsGroup (with group read added) or root.
			var fileGroup int64
			if sc := spec.SecurityContext; sc != nil && sc.FSGroup != nil {
				fileGroup = *sc.FSGroup
				mode |= 0o040
				groups = append(groups, *sc.FSGroup)
			}
			inGroup := gid == fileGroup
			for _, g := range groups {
				inGroup = inGroup || g == fileGroup
			}
			readable := uid == 0 || mode&0o004 != 0 || inGroup && mode&0o040 != 0
			checked++
			if !readable {
				t.Errorf("%s/%s: tls.key is mounted mode %04o owned by root:%d (the Pod sets no fsGroup); extauthz runs as uid %d gid %d and cannot read it: serve fails at start",
					w.kind, w.name, mode, fileGroup, uid, gid)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no extauthz sidecar rendered")
	}
}

// The chart's own Pod mounts the TLS Secret owner-read only, and its
// fsGroup gives extauthz group read: 0440, which extauthz does not warn of.
func TestTheChartsPodMountsItsTLSKeyForItsGroupOnly(t *testing.T) {
	m, _, err := renderChart(t, `tls: {enabled: true, existingSecret: extauthz-tls}`)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, w := range m.workloads() {
		for _, v := range w.pod.Spec.Volumes {
			if v.Secret == nil || v.Secret.SecretName != "extauthz-tls" {
				continue
			}
			checked++
			if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode != 0o400 {
				t.Errorf("%s/%s: the TLS Secret's defaultMode is %v, want 0400", w.kind, w.name, v.Secret.DefaultMode)
			}
			if sc := w.pod.Spec.SecurityContext; sc == nil || sc.FSGroup == nil || sc.RunAsGroup == nil || *sc.FSGroup != *sc.RunAsGroup {
				t.Errorf("%s/%s: no fsGroup gives extauthz's group read of its key", w.kind, w.name)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no TLS Secret volume rendered")
	}
}
