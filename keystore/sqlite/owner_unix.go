//go:build unix

package sqlite

import (
	"io/fs"
	"syscall"
)

// ownerOf is the user id that owns the file fi describes.
func ownerOf(fi fs.FileInfo) uint32 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Uid
	}
	return 0
}
