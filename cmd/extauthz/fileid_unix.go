//go:build unix

package main

import (
	"io/fs"
	"os"
	"syscall"
)

// fileIDOf is the device and inode of the file fi describes: which file a
// path names, whatever its size and time.
func fileIDOf(fi fs.FileInfo) fileID {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return fileID{dev: uint64(st.Dev), ino: uint64(st.Ino)}
	}
	return fileID{}
}

// ownedByAnother reports whether fi's file belongs to another user than
// the one this process runs as.
func ownedByAnother(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) != os.Geteuid()
}
