package keystore

import (
	"fmt"
	"slices"
	"sort"
)

// A key's scope and metadata: the policies it is valid under, and the few
// named strings it carries to Envoy and, where a policy forwards them, to
// the upstream. Both are operator-chosen labels, so their names keep to a
// charset that is safe in a URL path, a metric label, a header name and a
// JSON key alike, and their values never hold a key.

// Bounds of a key's policies and metadata.
const (
	// MaxPolicies is the most policies a key may name.
	MaxPolicies = 32
	// MaxPolicyNameBytes bounds a policy name.
	MaxPolicyNameBytes = 63
	// MaxMetaEntries is the most metadata entries a key may carry.
	MaxMetaEntries = 16
	// MaxMetaNameBytes bounds a metadata name; it becomes part of a header
	// name (x-authz-meta-<name>).
	MaxMetaNameBytes = 64
	// MaxMetaValueBytes bounds a metadata value.
	MaxMetaValueBytes = 256
)

// ValidatePolicyName checks a policy name: 1–63 characters of lower-case
// letters, digits, "_" and "-", starting with a letter or digit. The config's
// policy names and a key's policies are checked by it alike.
func ValidatePolicyName(field, name string) error {
	if name == "" || len(name) > MaxPolicyNameBytes || !isLowerAlnum(name[0]) {
		return &FieldError{field, "1 to 63 characters of a-z, 0-9, _ and -, starting with a letter or digit"}
	}
	for i := 1; i < len(name); i++ {
		if c := name[i]; !isLowerAlnum(c) && c != '_' && c != '-' {
			return &FieldError{field, "1 to 63 characters of a-z, 0-9, _ and -, starting with a letter or digit"}
		}
	}
	return nil
}

// ValidatePolicies checks the policies a key names: at most MaxPolicies
// valid names (ValidatePolicyName), none twice. The empty list means every
// policy.
func ValidatePolicies(policies []string) error {
	if len(policies) > MaxPolicies {
		return &FieldError{"policies", fmt.Sprintf("at most %d", MaxPolicies)}
	}
	for i, p := range policies {
		field := fmt.Sprintf("policies[%d]", i)
		if err := ValidatePolicyName(field, p); err != nil {
			return err
		}
		if slices.Contains(policies[:i], p) {
			return &FieldError{field, "named twice"}
		}
	}
	return nil
}

// ValidateMetaName checks a metadata name: 1–64 characters of lower-case
// letters, digits and "_", starting with a letter. A policy forwards an
// entry as the header x-authz-meta-<name> with "_" written "-", and no two
// names give one header because "-" is not allowed in them.
func ValidateMetaName(field, name string) error {
	if name == "" || len(name) > MaxMetaNameBytes || name[0] < 'a' || name[0] > 'z' {
		return &FieldError{field, "names are 1 to 64 characters of a-z, 0-9 and _, starting with a letter"}
	}
	for i := 1; i < len(name); i++ {
		if c := name[i]; !isLowerAlnum(c) && c != '_' {
			return &FieldError{field, "names are 1 to 64 characters of a-z, 0-9 and _, starting with a letter"}
		}
	}
	return nil
}

// ValidateMeta checks a key's metadata: at most MaxMetaEntries entries,
// each named as ValidateMetaName says, with a value of 1 to
// MaxMetaValueBytes bytes of visible text (CheckText). Errors name the
// entry, never its value.
func ValidateMeta(meta map[string]string) error {
	if len(meta) > MaxMetaEntries {
		return &FieldError{"meta", fmt.Sprintf("at most %d entries", MaxMetaEntries)}
	}
	names := make([]string, 0, len(meta))
	for name := range meta {
		names = append(names, name)
	}
	sort.Strings(names) // the first bad entry is the same one every time
	for _, name := range names {
		if err := ValidateMetaName("meta", name); err != nil {
			return err
		}
		field := "meta." + name
		v := meta[name]
		if v == "" || len(v) > MaxMetaValueBytes {
			return &FieldError{field, fmt.Sprintf("values are 1 to %d bytes", MaxMetaValueBytes)}
		}
		if err := CheckText(field, v); err != nil {
			return err
		}
	}
	return nil
}

// ValidUnder reports whether k may be used under the named policy: it
// names no policies (all of them), or names this one.
func (k *Key) ValidUnder(policy string) bool {
	return len(k.Policies) == 0 || slices.Contains(k.Policies, policy)
}

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }
