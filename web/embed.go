// Package web holds the browser demo room served by the signal role: plain
// HTML, CSS and ES modules embedded with go:embed, no build step. See
// docs/demo.md.
package web

import "embed"

// FS is the demo page (index.html, style.css and the modules it imports:
// app.js, stats.js, messages.js), the client module traverse.js and its
// example page, and the operator console (console.html, console.js,
// console.css) on the room API.
//
//go:embed index.html style.css app.js traverse.js stats.js messages.js example.html console.html console.js console.css
var FS embed.FS
