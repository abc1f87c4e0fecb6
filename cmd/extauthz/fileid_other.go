//go:build !unix

package main

import "io/fs"

// fileIDOf is the zero fileID where the platform gives none: the watch
// then goes by size and time alone.
func fileIDOf(fs.FileInfo) fileID { return fileID{} }

// ownedByAnother is false where the platform names no owner.
func ownedByAnother(fs.FileInfo) bool { return false }
