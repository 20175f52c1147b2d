package browsertest

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
)

// ScreenshotDir is where Screenshot saves: $TRAVERSE_SCREENSHOTS when set
// (CI keeps it as an artifact), else a directory under the system's
// temporary directory that outlives the test, so a person can look.
func ScreenshotDir() string {
	if d := os.Getenv("TRAVERSE_SCREENSHOTS"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "traverse-screenshots")
}

// Screenshot captures the page's viewport as PNG, saves it as name (".png"
// added) in ScreenshotDir, checks it is not blank (see CheckNotBlank), and
// returns its path and image.
func (p *Page) Screenshot(ctx context.Context, name string) (string, image.Image, error) {
	var r struct {
		Data string `json:"data"`
	}
	if err := p.Call(ctx, "Page.captureScreenshot", map[string]any{"format": "png"}, &r); err != nil {
		return "", nil, err
	}
	data, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		return "", nil, fmt.Errorf("browsertest: screenshot: %w", err)
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		return "", nil, fmt.Errorf("browsertest: screenshot: %w", err)
	}
	dir := ScreenshotDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return "", nil, err
	}
	return path, img, CheckNotBlank(img)
}

// CheckNotBlank fails an image that is one flat colour or nearly: fewer
// than 8 distinct colours, or more than 98% of its pixels one colour (a
// page that rendered nothing, or only its background).
func CheckNotBlank(img image.Image) error {
	b := img.Bounds()
	if b.Dx() < 16 || b.Dy() < 16 {
		return fmt.Errorf("browsertest: screenshot is %dx%d", b.Dx(), b.Dy())
	}
	counts := map[uint32]int{}
	total := 0
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			counts[(r>>8)<<16|(g>>8)<<8|bl>>8]++
			total++
		}
	}
	most := 0
	for _, n := range counts {
		most = max(most, n)
	}
	if len(counts) < 8 || most*100 > total*98 {
		return fmt.Errorf("browsertest: screenshot looks blank: %d colours, the commonest on %d of %d pixels", len(counts), most, total)
	}
	return nil
}

// Visible reports, for each CSS selector, whether an element matches it
// that is rendered (has a box) and has text or is a media element or
// canvas; it returns the selectors that do not.
func (p *Page) Visible(ctx context.Context, selectors ...string) ([]string, error) {
	var missing []string
	for _, sel := range selectors {
		var ok bool
		expr := fmt.Sprintf(`[...document.querySelectorAll(%q)].some((e) => { const r = e.getBoundingClientRect();
  return r.width > 0 && r.height > 0 && (e.textContent.trim() !== '' || ['VIDEO', 'CANVAS', 'svg', 'IMG'].includes(e.tagName)); })`, sel)
		if err := p.Eval(ctx, expr, &ok); err != nil {
			return nil, err
		}
		if !ok {
			missing = append(missing, sel)
		}
	}
	return missing, nil
}
