// Package web holds the browser demo room served by the signal role: plain
// HTML, CSS and ES modules embedded with go:embed, no build step. See
// docs/demo.md.
package web

import "embed"

// FS is the demo page: index.html, style.css and the modules it imports.
//
//go:embed index.html style.css app.js signal.js stats.js
var FS embed.FS
